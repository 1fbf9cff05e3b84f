// Package kernel fetches the guest kernel: Debian's linux-image-6.12 cloud
// flavour from bookworm-backports, downloaded with apt-get, checked against
// apt's signed package index, unpacked with dpkg -x and indexed with depmod
// into a cache, so that later builds need no network.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Suite is the Debian suite the guest kernel comes from: it carries 6.12,
// whose cloud flavour has the TDX and SEV guest drivers Cloak needs.
const Suite = "bookworm-backports"

// packagePattern matches the kernel image packages Cloak accepts: the
// signed cloud flavour, not -dbg or -unsigned builds.
const packagePattern = `^linux-image-6\.12\.[0-9]+\+deb12(\.[0-9]+)?-cloud-amd64$`

var packageRE = regexp.MustCompile(packagePattern)

// metaFile marks a complete cache entry; it is written last.
const metaFile = "kernel.json"

// Options say which kernel to fetch and where to keep it.
type Options struct {
	// CacheDir is Cloak's cache root; the kernel lives in
	// CacheDir/kernel/<package version>/.
	CacheDir string
	// Version is an exact Debian package version (e.g. 6.12.95-1~bpo12+1).
	// Empty picks the newest one in Suite.
	Version string
	// Progress receives one line per slow step; nil discards them.
	Progress io.Writer
}

// Kernel is an unpacked kernel package in the cache.
type Kernel struct {
	Package string `json:"package"` // e.g. linux-image-6.12.95+deb12-cloud-amd64
	Version string `json:"version"` // Debian package version
	Release string `json:"release"` // uname -r, e.g. 6.12.95+deb12-cloud-amd64
	// DebSHA256 is the .deb's SHA-256 as apt's package index lists it;
	// the download matched it.
	DebSHA256 string `json:"deb_sha256"`

	dir string
}

// Vmlinuz returns the path of the compressed kernel image.
func (k *Kernel) Vmlinuz() string {
	return filepath.Join(k.dir, "root", "boot", "vmlinuz-"+k.Release)
}

// Config returns the path of the kernel's build configuration.
func (k *Kernel) Config() string {
	return filepath.Join(k.dir, "root", "boot", "config-"+k.Release)
}

// ModulesDir returns the directory holding modules.dep and kernel/.
func (k *Kernel) ModulesDir() string {
	return filepath.Join(k.dir, "root", "lib", "modules", k.Release)
}

// Fetch returns the kernel from the cache, downloading and unpacking it
// first if needed. With an exact Version already cached it runs no command.
func Fetch(ctx context.Context, o Options) (*Kernel, error) {
	if o.CacheDir == "" {
		return nil, errors.New("kernel cache dir is empty")
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	version := o.Version
	if version != "" {
		if k, err := load(filepath.Join(o.CacheDir, "kernel", version)); err == nil {
			return k, nil
		}
	}
	cands, err := candidates(ctx)
	if err != nil {
		return nil, err
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("no package matching %s in %s: run ci/vm-deps.sh (adds the %s apt source and runs apt-get update)",
			packagePattern, Suite, Suite)
	}
	var pick candidate
	if version == "" {
		if pick, err = newest(ctx, cands); err != nil {
			return nil, err
		}
	} else {
		found := false
		for _, c := range cands {
			if c.version == version {
				pick, found = c, true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("kernel package version %q is not in %s (apt-cache madison lists %d cloud 6.12 kernels there)",
				version, Suite, len(cands))
		}
	}
	dir := filepath.Join(o.CacheDir, "kernel", pick.version)
	if k, err := load(dir); err == nil {
		return k, nil
	}
	fmt.Fprintf(progress, "fetching kernel %s %s...\n", pick.name, pick.version)
	return download(ctx, pick, dir)
}

func load(dir string) (*Kernel, error) {
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return nil, err
	}
	var k Kernel
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("kernel cache %s: %w", dir, err)
	}
	k.dir = dir
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		return nil, fmt.Errorf("kernel cache %s is incomplete: %w", dir, err)
	}
	return &k, nil
}

type candidate struct{ name, version string }

// candidates lists the matching kernel packages Suite offers, from apt's
// local index (no network).
func candidates(ctx context.Context) ([]candidate, error) {
	out, err := run(ctx, "", "apt-cache", "search", "--names-only", packagePattern)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, ok := strings.Cut(line, " "); ok && packageRE.MatchString(name) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	out, err = run(ctx, "", "apt-cache", append([]string{"madison"}, names...)...)
	if err != nil {
		return nil, err
	}
	return parseMadison(out, Suite), nil
}

// parseMadison reads "name | version | uri suite/component arch Packages"
// lines and keeps the matching packages of suite.
func parseMadison(out []byte, suite string) []candidate {
	var cands []candidate
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "|")
		if len(f) != 3 {
			continue
		}
		name, version, source := strings.TrimSpace(f[0]), strings.TrimSpace(f[1]), strings.Fields(f[2])
		if !packageRE.MatchString(name) || len(source) < 2 || !strings.HasPrefix(source[1], suite+"/") {
			continue
		}
		cands = append(cands, candidate{name, version})
	}
	return cands
}

// newest picks the highest version by Debian's ordering, which only dpkg
// implements authoritatively (epochs, ~ and + rules).
func newest(ctx context.Context, cands []candidate) (candidate, error) {
	best := cands[0]
	for _, c := range cands[1:] {
		err := exec.CommandContext(ctx, "dpkg", "--compare-versions", c.version, "gt", best.version).Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
			best = c
		case errors.As(err, &exit) && exit.ExitCode() == 1:
		default:
			return candidate{}, fmt.Errorf("dpkg --compare-versions: %w", err)
		}
	}
	return best, nil
}

// indexSHA256 returns the SHA256 field apt's index gives for name=version.
func indexSHA256(ctx context.Context, c candidate) (string, error) {
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", c.name+"="+c.version)
	if err != nil {
		return "", err
	}
	return parseSHA256Field(out)
}

func parseSHA256Field(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "SHA256: "); ok {
			v = strings.TrimSpace(v)
			if b, err := hex.DecodeString(v); err != nil || len(b) != sha256.Size {
				return "", fmt.Errorf("apt index SHA256 %q is not a SHA-256", v)
			}
			return v, nil
		}
	}
	return "", errors.New("apt index lists no SHA256 for the package")
}

// download fetches c into a temporary directory beside dir and renames it
// into place once complete, so an interrupted fetch never looks cached.
func download(ctx context.Context, c candidate, dir string) (*Kernel, error) {
	want, err := indexSHA256(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("kernel %s %s: %w", c.name, c.version, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := run(ctx, tmp, "apt-get", "download", c.name+"="+c.version); err != nil {
		return nil, fmt.Errorf("download kernel (is the %s source configured? see ci/vm-deps.sh): %w", Suite, err)
	}
	debs, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download left %d .deb files in %s, want 1", len(debs), tmp)
	}
	got, err := fileSHA256(debs[0])
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, fmt.Errorf("kernel package %s: SHA-256 %s, apt index says %s", filepath.Base(debs[0]), got, want)
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, "", "dpkg", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("unpack kernel: %w", err)
	}
	release := strings.TrimPrefix(c.name, "linux-image-")
	if _, err := os.Stat(filepath.Join(root, "boot", "vmlinuz-"+release)); err != nil {
		return nil, fmt.Errorf("kernel package %s has no boot/vmlinuz-%s", c.name, release)
	}
	// Debian's package ships no modules.dep (its postinst runs depmod);
	// build the index here, once, for the module resolver.
	if _, err := run(ctx, "", "depmod", "-b", root, release); err != nil {
		return nil, fmt.Errorf("index kernel modules (depmod comes from the kmod package, see ci/vm-deps.sh): %w", err)
	}
	if err := os.Remove(debs[0]); err != nil {
		return nil, err
	}
	k := &Kernel{Package: c.name, Version: c.version, Release: release, DebSHA256: got}
	meta, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, metaFile), append(meta, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	// MkdirTemp made it 0700; the cache is shared like any build cache.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		// A concurrent build may have finished the same version first.
		if k, lerr := load(dir); lerr == nil {
			return k, nil
		}
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	k.dir = dir
	return k, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// run runs a command and returns its stdout; on failure the error carries
// the command's stderr, which names what went wrong.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

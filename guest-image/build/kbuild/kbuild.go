// Package kbuild compiles Cloak's guest kernel from Debian's
// linux-source-6.12: `make tinyconfig`, the fragment cloak.config merged on
// top, `make olddefconfig`, then bzImage, with the build's timestamp, user,
// host and version fixed so that two builds give the same bytes. The result
// is cached under CacheDir/cloak-kernel/<source version>-<key>/, where the
// key hashes the source version, the fragment and the compiler, so a machine
// builds each configuration once.
//
// No Go package compiles Linux; this drives the kernel's own kbuild (make,
// gcc, flex, bison, bc, libelf-dev: ci/vm-deps.sh installs them).
package kbuild

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cloak-containers/cloak/guest-image/build/kernel"
)

// Fragment is cloak.config: the options set on top of tinyconfig. Every
// option it sets must come out of olddefconfig unchanged (CheckConfig): an
// option whose dependencies are missing is silently dropped by Kconfig, and
// the guest relies on all of them.
//
//go:embed cloak.config
var Fragment []byte

// knownBuilds records the bzImage SHA-256 of builds made elsewhere, one
// line per configuration: "<source version> <fragment sha256> <bzImage
// sha256> <compiler>". A build of the same inputs must give the same bytes
// (TestBuiltKernel).
//
//go:embed known-builds.txt
var knownBuilds string

// Recorded returns the bzImage SHA-256 known-builds.txt records for k's
// source version, fragment and compiler.
func Recorded(k *Kernel) (string, bool) {
	for _, line := range strings.Split(knownBuilds, "\n") {
		f := strings.SplitN(strings.TrimSpace(line), " ", 4)
		if len(f) == 4 && !strings.HasPrefix(f[0], "#") && f[0] == k.SourceVersion && f[1] == k.FragmentSHA256 && f[3] == k.Compiler {
			return f[2], true
		}
	}
	return "", false
}

// KnownLine is k's line for known-builds.txt.
func KnownLine(k *Kernel) string {
	return strings.Join([]string{k.SourceVersion, k.FragmentSHA256, k.SHA256, k.Compiler}, " ")
}

// builderVersion changes when the build steps below change in a way that
// changes the output, so old cache entries are not reused.
const builderVersion = "1"

// Reproducible-build settings (Documentation/kbuild/reproducible-builds.rst).
var reproducibleEnv = []string{
	"KBUILD_BUILD_TIMESTAMP=1970-01-01 00:00:00 UTC",
	"KBUILD_BUILD_USER=cloak",
	"KBUILD_BUILD_HOST=cloak",
	"KBUILD_BUILD_VERSION=1",
	"LC_ALL=C",
	"TZ=UTC",
}

// metaFile marks a complete cache entry; it is written last.
const metaFile = "kernel.json"

// Options select what to build and where to keep it.
type Options struct {
	// CacheDir is Cloak's cache root.
	CacheDir string
	// SourceVersion is the linux-source-6.12 package version; default
	// kernel.DefaultSourceVersion.
	SourceVersion string
	// Fragment replaces the embedded cloak.config (tests).
	Fragment []byte
	// Jobs is make's -j; default the number of CPUs.
	Jobs int
	// Progress receives one line per slow step; nil discards them.
	Progress io.Writer
}

// Kernel is a built kernel in the cache.
type Kernel struct {
	SourcePackage string `json:"source_package"`
	SourceVersion string `json:"source_version"`
	// SourceDebSHA256 is the source .deb's SHA-256 from apt's index.
	SourceDebSHA256 string `json:"source_deb_sha256"`
	// FragmentSHA256 is the SHA-256 of the cloak.config that was applied.
	FragmentSHA256 string `json:"fragment_sha256"`
	// Compiler is the first line of `gcc --version`.
	Compiler string `json:"compiler"`
	// Key names the cache entry: source version, fragment, compiler.
	Key string `json:"key"`
	// SHA256 is the bzImage's SHA-256.
	SHA256 string `json:"sha256"`
	// BuildSeconds is how long make took (information only).
	BuildSeconds float64 `json:"build_seconds"`

	dir string
}

// BzImage returns the path of the kernel image.
func (k *Kernel) BzImage() string { return filepath.Join(k.dir, "bzImage") }

// Config returns the path of the kernel's resolved .config.
func (k *Kernel) Config() string { return filepath.Join(k.dir, "config") }

// Dir returns the cache entry's directory.
func (k *Kernel) Dir() string { return k.dir }

// Build returns the cached kernel for o, compiling it first if needed.
func Build(ctx context.Context, o Options) (*Kernel, error) {
	if o.CacheDir == "" {
		return nil, errors.New("kbuild: cache dir is empty")
	}
	frag := o.Fragment
	if frag == nil {
		frag = Fragment
	}
	version := o.SourceVersion
	if version == "" {
		version = kernel.DefaultSourceVersion
	}
	cc, err := compiler(ctx)
	if err != nil {
		return nil, err
	}
	key := cacheKey(version, frag, cc)
	dir := filepath.Join(o.CacheDir, "cloak-kernel", version+"-"+key)
	if k, err := load(dir); err == nil {
		return k, nil
	}
	src, err := kernel.FetchSource(ctx, kernel.Options{CacheDir: o.CacheDir, Version: version, Progress: o.Progress})
	if err != nil {
		return nil, err
	}
	return compile(ctx, o, src, frag, cc, key, dir)
}

// BuildInto compiles the kernel for o into dir without consulting or
// filling the cache entry (the source tarball is still cached). The
// reproducibility test builds twice this way.
func BuildInto(ctx context.Context, o Options, dir string) (*Kernel, error) {
	frag := o.Fragment
	if frag == nil {
		frag = Fragment
	}
	version := o.SourceVersion
	if version == "" {
		version = kernel.DefaultSourceVersion
	}
	cc, err := compiler(ctx)
	if err != nil {
		return nil, err
	}
	src, err := kernel.FetchSource(ctx, kernel.Options{CacheDir: o.CacheDir, Version: version, Progress: o.Progress})
	if err != nil {
		return nil, err
	}
	return compile(ctx, o, src, frag, cc, cacheKey(version, frag, cc), dir)
}

func cacheKey(version string, frag []byte, cc string) string {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(builderVersion), []byte(version), frag, []byte(cc)} {
		fmt.Fprintf(h, "%d\n", len(part))
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func compiler(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "gcc", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("gcc --version: %w (the guest kernel is compiled here: run ci/vm-deps.sh, which installs gcc, make, flex, bison, bc, libelf-dev, libssl-dev)", err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// compile unpacks src in a temporary directory beside dir, configures and
// builds it, and renames the result into dir.
func compile(ctx context.Context, o Options, src *kernel.Source, frag []byte, cc, key, dir string) (*Kernel, error) {
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "src")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "unpacking %s %s...\n", src.Package, src.Version)
	if err := run(ctx, tree, nil, "tar", "-xJf", src.Tarball(), "--strip-components=1"); err != nil {
		return nil, fmt.Errorf("unpack kernel source: %w", err)
	}
	fragPath := filepath.Join(tmp, "cloak.config")
	if err := os.WriteFile(fragPath, frag, 0o644); err != nil {
		return nil, err
	}
	env := append(os.Environ(), reproducibleEnv...)
	for _, step := range [][]string{
		{"make", "-s", "tinyconfig"},
		{"./scripts/kconfig/merge_config.sh", "-m", "-O", ".", ".config", fragPath},
		{"make", "-s", "olddefconfig"},
	} {
		if err := run(ctx, tree, env, step[0], step[1:]...); err != nil {
			return nil, fmt.Errorf("configure kernel: %w", err)
		}
	}
	config, err := os.ReadFile(filepath.Join(tree, ".config"))
	if err != nil {
		return nil, err
	}
	if err := CheckConfig(config, frag); err != nil {
		return nil, err
	}
	jobs := o.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	fmt.Fprintf(progress, "compiling the guest kernel (make -j%d bzImage; 6-10 min on 2 cores)...\n", jobs)
	start := time.Now()
	if err := run(ctx, tree, env, "make", "-s", "-j"+strconv.Itoa(jobs), "bzImage"); err != nil {
		return nil, fmt.Errorf("compile kernel: %w", err)
	}
	took := time.Since(start)
	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, err
	}
	bz, err := os.ReadFile(filepath.Join(tree, "arch", "x86", "boot", "bzImage"))
	if err != nil {
		return nil, fmt.Errorf("kernel build left no bzImage: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "bzImage"), bz, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, "config"), config, 0o644); err != nil {
		return nil, err
	}
	fs := sha256.Sum256(frag)
	bs := sha256.Sum256(bz)
	k := &Kernel{
		SourcePackage: src.Package, SourceVersion: src.Version, SourceDebSHA256: src.DebSHA256,
		FragmentSHA256: hex.EncodeToString(fs[:]), Compiler: cc, Key: key,
		SHA256: hex.EncodeToString(bs[:]), BuildSeconds: took.Round(time.Second).Seconds(),
	}
	meta, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, metaFile), append(meta, '\n'), 0o644); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "guest kernel built in %s: %d KiB, sha256 %s\n", took.Round(time.Second), len(bz)>>10, k.SHA256)
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.Rename(out, dir); err != nil {
		if k, lerr := load(dir); lerr == nil {
			return k, nil // a concurrent build finished first
		}
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	k.dir = dir
	return k, nil
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
	if _, err := os.Stat(k.BzImage()); err != nil {
		return nil, fmt.Errorf("kernel cache %s is incomplete: %w", dir, err)
	}
	return &k, nil
}

// CheckConfig checks a resolved .config against a fragment: every
// "CONFIG_X=v" the fragment sets must be there as is, and every
// "# CONFIG_X is not set" must not be set. The error lists every option that
// differs, with what the .config has instead.
func CheckConfig(config, fragment []byte) error {
	have := map[string]string{} // CONFIG_X -> value, "n" when not set
	sc := bufio.NewScanner(bytes.NewReader(config))
	for sc.Scan() {
		name, value, ok := parseLine(sc.Text())
		if ok {
			have[name] = value
		}
	}
	var bad []string
	sc = bufio.NewScanner(bytes.NewReader(fragment))
	for sc.Scan() {
		name, want, ok := parseLine(sc.Text())
		if !ok {
			continue
		}
		got, set := have[name]
		if !set {
			got = "n"
		}
		if got != want {
			bad = append(bad, fmt.Sprintf("%s=%s (the built .config has %s)", name, want, got))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("kernel config lacks %d option(s) the guest relies on: %s; Kconfig drops an option whose dependencies are off, so add what it depends on to cloak.config (see `make menuconfig` help for it)",
			len(bad), strings.Join(bad, ", "))
	}
	return nil
}

// parseLine reads "CONFIG_X=v" or "# CONFIG_X is not set".
func parseLine(line string) (name, value string, ok bool) {
	line = strings.TrimSpace(line)
	if rest, found := strings.CutPrefix(line, "# "); found {
		if n, isNot := strings.CutSuffix(rest, " is not set"); isNot && strings.HasPrefix(n, "CONFIG_") {
			return n, "n", true
		}
		return "", "", false
	}
	if !strings.HasPrefix(line, "CONFIG_") {
		return "", "", false
	}
	return strings.Cut(line, "=")
}

func run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		tail := out.String()
		if len(tail) > 4000 {
			tail = "..." + tail[len(tail)-4000:]
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(tail))
	}
	return nil
}

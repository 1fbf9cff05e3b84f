package build

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/cloak-containers/cloak/internal/version"
)

// DefaultRuncVersion is the runc module version the guest runs. Debian's
// runc 1.1.5 fails CRI pods; v1.4.x installs from its Go module.
const DefaultRuncVersion = "v1.4.3"

// runcTags: seccomp so that a container's seccomp profile from its OCI spec
// is enforced rather than refused (runc built without it errors on any
// profile); netgo and osusergo so that glibc's NSS, which cannot work in a
// static binary, is never called.
const runcTags = "seccomp netgo osusergo"

// reproducibleLDFlags strip the symbol table and the Go build ID, which
// would otherwise embed a hash of the build's inputs and file paths.
const reproducibleLDFlags = "-s -w -buildid="

var runcVersionRE = regexp.MustCompile(`(?m)^runc version (\S+)$`)

// goCommand runs the go tool with env added to the environment and returns
// its combined output in the error on failure.
func goCommand(ctx context.Context, dir string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// moduleRoot returns the directory of the Cloak module containing dir.
func moduleRoot(ctx context.Context, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Path}} {{.Dir}}")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("find the Cloak Go module from %s (run inside the checkout or pass the binaries): %w", dir, err)
	}
	path, root, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	if path != "github.com/cloak-containers/cloak" {
		return "", fmt.Errorf("%s is in module %q, not github.com/cloak-containers/cloak", dir, path)
	}
	return root, nil
}

// buildGuestBinary builds ./cmd/NAME of the module at root as a static,
// reproducible binary: no cgo, trimmed paths, no build ID, no VCS stamp
// (the Go toolchain's would add the commit time). Only the version and
// commit are stamped (internal/version), as the Makefile does: the same for
// every build of a commit, but "-dirty" for a tree with uncommitted changes.
func buildGuestBinary(ctx context.Context, root, name, tmp string) ([]byte, error) {
	if _, err := os.Stat(filepath.Join(root, "cmd", name)); err != nil {
		return nil, fmt.Errorf("build %s: %w (pass a prebuilt binary instead)", name, err)
	}
	out := filepath.Join(tmp, name)
	ldflags := strings.TrimSpace(reproducibleLDFlags + " " + version.LDFlags(sourceVersion(ctx, root)))
	err := goCommand(ctx, root, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false"},
		"build", "-trimpath", "-ldflags", ldflags, "-o", out, "./cmd/"+name)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", name, err)
	}
	return readStatic(out)
}

// sourceVersion is `git describe --tags --always --dirty` and `git rev-parse
// HEAD` of the checkout at root, like the Makefile's VERSION and COMMIT;
// empty (the binaries then say dev/unknown) outside a git checkout.
func sourceVersion(ctx context.Context, root string) (describe, commit string) {
	git := func(args ...string) string {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	return git("describe", "--tags", "--always", "--dirty"), git("rev-parse", "HEAD")
}

// cachedRunc returns the runc binary for version from the cache, building it
// from its Go module on first use. runc needs cgo (nsenter, libseccomp), so
// it is linked statically against glibc and libseccomp's static library.
func cachedRunc(ctx context.Context, cacheDir, version string, progress func(string, ...any)) (string, error) {
	dir := filepath.Join(cacheDir, "runc", version)
	bin := filepath.Join(dir, "runc")
	if _, err := os.Stat(bin); err == nil {
		if _, err := readStatic(bin); err == nil {
			return bin, nil
		}
		// Something other than this function put a dynamic runc (or a
		// truncated file) there, e.g. a hand-run `go install` with GOBIN
		// set to the cache: the guest cannot run it, so build a good one
		// rather than fail every image build on this machine until
		// someone deletes the cache by hand.
		progress("cached %s is not a static executable; rebuilding it", bin)
		if err := os.RemoveAll(dir); err != nil {
			return "", fmt.Errorf("runc cache: %w", err)
		}
	}
	progress("building runc %s (static, seccomp)...", version)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("runc cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return "", fmt.Errorf("runc cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	// GOFLAGS is cleared: `go install pkg@version` builds outside any
	// module and refuses flags like -mod meant for Cloak's own build.
	err = goCommand(ctx, tmp, []string{"GOBIN=" + tmp, "CGO_ENABLED=1", "GOFLAGS="},
		"install", "-trimpath", "-tags", runcTags,
		"-ldflags", reproducibleLDFlags+" -extldflags -static",
		"github.com/opencontainers/runc@"+version)
	if err != nil {
		return "", fmt.Errorf("build runc %s (needs gcc and libseccomp-dev; ci/vm-deps.sh installs them): %w", version, err)
	}
	if _, err := readStatic(filepath.Join(tmp, "runc")); err != nil {
		return "", err
	}
	// MkdirTemp made it 0700; the cache is shared like any build cache.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(bin); serr == nil {
			return bin, nil // a concurrent build got there first
		}
		return "", fmt.Errorf("runc cache: %w", err)
	}
	return bin, nil
}

// runcVersion runs `runc --version` and returns the version it reports,
// which also proves the binary starts without a dynamic loader.
func runcVersion(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	m := runcVersionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version printed no \"runc version\" line: %q", bin, out)
	}
	return string(m[1]), nil
}

// readStatic reads an executable and checks that it can run in the guest,
// which has no dynamic loader or libraries: an x86-64 ELF executable with no
// PT_INTERP program header.
func readStatic(name string) ([]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	if err := checkStatic(b); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

func checkStatic(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("built for %v %v, the guest is x86-64", f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %v is not an executable", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked (has an ELF interpreter); the guest has no libraries: build it static")
		}
	}
	return nil
}

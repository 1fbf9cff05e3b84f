package agent

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// runcVersion is the runc the guest image ships (guest-image/build).
const runcVersion = "v1.4.3"

// Set by TestMain for the tests that run real containers; empty (with
// noRuntime saying why) when the machine cannot run them.
var (
	runcBinary  string
	busyboxRoot string
	noRuntime   string
)

// TestMain prepares what the container tests need before any test starts
// the reaper: from then on, wait4(-1) in this process collects every child,
// so helper commands must run first. The test process becomes a child
// subreaper, standing in for PID 1: container inits are reparented to it.
func TestMain(m *testing.M) {
	flag.Parse()
	var cleanup func()
	// -short runs need no containers.
	if !testing.Short() {
		cleanup = prepareRuntime()
	}
	code := m.Run()
	if cleanup != nil {
		cleanup()
	}
	os.Exit(code)
}

func prepareRuntime() func() {
	if os.Geteuid() != 0 {
		noRuntime = "containers need root (mounts, cgroups, namespaces)"
		return nil
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		noRuntime = "no busybox binary (apt-get install busybox-static)"
		return nil
	}
	bin, err := findRunc()
	if err != nil {
		noRuntime = err.Error()
		return nil
	}
	dir, err := os.MkdirTemp("", "agent-test-rootfs-")
	if err != nil {
		noRuntime = err.Error()
		return nil
	}
	if err := buildBusyboxRootfs(dir, busybox); err != nil {
		noRuntime = err.Error()
		return func() { os.RemoveAll(dir) }
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		noRuntime = fmt.Sprintf("PR_SET_CHILD_SUBREAPER: %v", err)
		return func() { os.RemoveAll(dir) }
	}
	runcBinary, busyboxRoot = bin, dir
	return func() { os.RemoveAll(dir) }
}

// findRunc uses $CLOAK_RUNC, the image builder's cached runc, or builds
// runc from its Go module into the same cache.
func findRunc() (string, error) {
	if bin := os.Getenv("CLOAK_RUNC"); bin != "" {
		return bin, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	// The guest image's static runc (cloak-image build caches it), else a
	// plain build of the same version in a cache of its own: the image's
	// cache must only ever hold the static build, which cloak-image checks.
	if bin := filepath.Join(home, ".cache", "cloak", "runc", runcVersion, "runc"); fileExists(bin) {
		return bin, nil
	}
	dir := filepath.Join(home, ".cache", "cloak", "runc-test", runcVersion)
	bin := filepath.Join(dir, "runc")
	if fileExists(bin) {
		return bin, nil
	}
	tmp, err := os.MkdirTemp("", "agent-test-runc-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "install", "github.com/opencontainers/runc@"+runcVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build runc %s for the container tests: %v: %s", runcVersion, err, out)
	}
	// Another process may fill the cache meanwhile; the file it leaves is as good.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(filepath.Join(tmp, "runc"), bin); err != nil {
		return "", err
	}
	return bin, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// buildBusyboxRootfs makes a minimal image rootfs: static busybox with one
// link per applet, and an /etc/passwd for user lookups.
func buildBusyboxRootfs(dir, busybox string) error {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			return err
		}
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
	group := "root:x:0:\nnogroup:x:65534:\n"
	if err := os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte(passwd), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "etc", "group"), []byte(group), 0o644)
}

package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	cloakRuntime = "io.containerd.cloak.v2"
	runcRuntime  = "io.containerd.runc.v2"
	// ctrNamespace is the containerd namespace the tests use.
	ctrNamespace = "cloak-test"
)

// depsScript runs a ci/*-deps.sh script once per test process; the script
// builds or installs into the cache and prints the directory of what it
// made.
type depsScript struct {
	script string
	once   sync.Once
	dir    string
	err    error
}

func (d *depsScript) get(t testing.TB, what string) string {
	t.Helper()
	d.once.Do(func() {
		cmd := exec.Command(d.script)
		cmd.Dir = "../.."
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			d.err = fmt.Errorf("%s: %v\n%s", d.script, err, stderr.String())
			return
		}
		d.dir = strings.TrimSpace(string(out))
	})
	if d.err != nil {
		// CI machines can build it (ci/vm-deps.sh installs what the
		// scripts need); failing to is a failure, not a reason to skip.
		t.Fatalf("%s: %v", what, d.err)
	}
	return d.dir
}

var containerdScript = &depsScript{script: "./ci/containerd-deps.sh"}

// containerdDeps returns the directory holding containerd, ctr,
// containerd-shim-runc-v2 and runc, built once into the cache by
// ci/containerd-deps.sh at go.mod's containerd version.
func containerdDeps(t testing.TB) string {
	t.Helper()
	return containerdScript.get(t, "build the container stack")
}

// buildShim builds containerd-shim-cloak-v2 into a directory of its own,
// which goes first on containerd's PATH.
func buildShim(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/containerd-shim-cloak-v2")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build shim: %v\n%s", err, out)
	}
	return dir
}

// containerdEnv is a containerd daemon owned by one test: its root, state
// and sockets live in the test's temp dir; it is stopped by PID.
type containerdEnv struct {
	bin, address string
	path         string // PATH for ctr and the daemon (shims, runc)
	cmd          *exec.Cmd
	log          string
}

func startContainerd(t testing.TB, bin, shimDir string) *containerdEnv {
	t.Helper()
	return startContainerdWith(t, bin, shimDir, `
  "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
`, "")
}

// startContainerdWith is startContainerd with extra configuration (TOML
// appended to the daemon's config) and a choice of disabled plugins.
func startContainerdWith(t testing.TB, bin, shimDir, disabledPlugins, extra string) *containerdEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	address := filepath.Join(dir, "c.sock")
	conf := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = [%s]
[grpc]
  address = %q
[ttrpc]
  address = %q
%s`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), disabledPlugins, address, address+".ttrpc", extra)
	confPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	e := &containerdEnv{
		bin: bin, address: address, log: filepath.Join(dir, "containerd.log"),
		path: shimDir + ":" + bin + ":" + os.Getenv("PATH"),
	}
	logf, err := os.Create(e.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	e.cmd = exec.Command(filepath.Join(bin, "containerd"), "--config", confPath, "--log-level", "debug")
	e.cmd.Env = append(os.Environ(), "PATH="+e.path)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Errorf("containerd did not stop on SIGTERM; killing it")
			_ = e.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			if b, err := os.ReadFile(e.log); err == nil {
				t.Logf("containerd log (tail):\n%s", tailLines(string(b), 80))
			}
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := e.ctr(t, nil, "version"); err == nil {
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(e.log)
			t.Fatalf("containerd exited at start:\n%s", tailLines(string(b), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not answer within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Runs before containerd stops (cleanups run last-in first-out): a test
	// that failed halfway leaves no task, shim or VM behind.
	t.Cleanup(func() { e.removeAll(t) })
	return e
}

// removeAll force-deletes every task and container of the test namespace.
func (e *containerdEnv) removeAll(t testing.TB) {
	t.Helper()
	tasks, err := e.ctr(t, nil, "task", "ls", "-q")
	if err != nil {
		t.Errorf("list tasks: %v", err)
	}
	for _, id := range strings.Fields(tasks.stdout) {
		t.Logf("removing task %s left by the test", id)
		if _, err := e.ctr(t, nil, "task", "delete", "--force", id); err != nil {
			t.Errorf("remove task %s: %v", id, err)
		}
	}
	containers, err := e.ctr(t, nil, "container", "ls", "-q")
	if err != nil {
		t.Errorf("list containers: %v", err)
	}
	for _, id := range strings.Fields(containers.stdout) {
		if _, err := e.ctr(t, nil, "container", "delete", id); err != nil {
			t.Errorf("remove container %s: %v", id, err)
		}
	}
}

// ctrResult is what one ctr command did.
type ctrResult struct {
	stdout, stderr string
	code           int
}

// ctr runs a ctr command against the test's containerd; err is set only
// when ctr could not run at all or exited non-zero.
func (e *containerdEnv) ctr(t testing.TB, stdin []byte, args ...string) (ctrResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := execCtr(ctx, e, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	return commandResult("ctr", args, cmd.Run(), &out, &errOut)
}

// commandResult is what a finished tool command did: err is set only when
// it could not run at all or exited non-zero (the code is in the result).
func commandResult(tool string, args []string, err error, out, errOut *bytes.Buffer) (ctrResult, error) {
	r := ctrResult{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		return r, fmt.Errorf("%s %v: %w", tool, args, err)
	}
	if r.code != 0 {
		return r, fmt.Errorf("%s %v: exit %d\nstderr: %s", tool, args, r.code, r.stderr)
	}
	return r, nil
}

// mustCtr is ctr that fails the test on a non-zero exit.
func (e *containerdEnv) mustCtr(t testing.TB, args ...string) ctrResult {
	t.Helper()
	r, err := e.ctr(t, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// shimSocket is where containerd's shim library puts the task socket of id
// (pkg/shim SocketAddress).
func (e *containerdEnv) shimSocket(id string) string {
	sum := sha256.Sum256([]byte(filepath.Join(e.address, ctrNamespace, id)))
	return fmt.Sprintf("/run/containerd/s/%x", sum)
}

// pidsWithArg lists processes whose command line contains arg.
func pidsWithArg(t testing.TB, arg string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(raw), arg) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitNoPids waits until no process's command line contains arg.
func waitNoPids(t testing.TB, arg string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		pids := pidsWithArg(t, arg)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes %v with %q in their command line are left", pids, arg)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// execCtr is the ctr command for args, for callers that wire stdio
// themselves.
func execCtr(ctx context.Context, e *containerdEnv, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "ctr"), append([]string{"--address", e.address, "--namespace", ctrNamespace}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+e.path)
	return cmd
}

// containerdWithBusybox starts a containerd daemon with the cloak shim on its
// PATH, pushes the busybox test image to a loopback registry and pulls it
// into containerd. It returns the daemon, the guest image directory, the
// registry's host:port and the image reference.
func containerdWithBusybox(t testing.TB) (e *containerdEnv, imageDir, registryHost, ref string) {
	t.Helper()
	bin := containerdDeps(t)
	imageDir = guestImage(t)
	shimDir := buildShim(t)
	registryHost = startRegistry(t)
	ref = pushBusybox(t, registryHost)
	e = startContainerd(t, bin, shimDir)
	e.mustCtr(t, "image", "pull", "--plain-http", ref)
	return e, imageDir, registryHost, ref
}

// cloakVMs is where one test's cloak VMs keep their sockets and guest
// consoles; its configurations reach the test registry the way a user-mode
// network guest does (the host's loopback at hostFromGuest). Consoles are
// shown when the test fails.
type cloakVMs struct {
	runDir, consoleDir     string
	imageDir, registryHost string
}

func newCloakVMs(t testing.TB, imageDir, registryHost string) *cloakVMs {
	t.Helper()
	// Short: the VMs' QMP and agent sockets live here.
	runDir, err := os.MkdirTemp("", "cloakrun")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	v := &cloakVMs{runDir: runDir, consoleDir: t.TempDir(), imageDir: imageDir, registryHost: registryHost}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(v.consoleDir, "*.log"))
		for _, l := range logs {
			if b, err := os.ReadFile(l); err == nil {
				t.Logf("guest console %s (tail):\n%s", filepath.Base(l), tailLines(string(b), 30))
			}
		}
	})
	return v
}

// config writes a cloak runtime configuration with the extra top-level
// TOML keys and returns its path.
func (v *cloakVMs) config(t testing.TB, extra string) string {
	t.Helper()
	_, port, _ := strings.Cut(v.registryHost, ":")
	path := filepath.Join(t.TempDir(), "cloak.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(`image_dir = %q
run_dir = %q
console_log_dir = %q
agent_timeout_seconds = 120
%s
[registry]
insecure = [%q]
mirrors = { %q = "http://%s:%s" }
`, v.imageDir, v.runDir, v.consoleDir, extra, v.registryHost, v.registryHost, hostFromGuest, port)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

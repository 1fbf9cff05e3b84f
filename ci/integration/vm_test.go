package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/agent"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// The guest sees the host's loopback at this address (QEMU user networking).
const hostFromGuest = "10.0.2.2"

var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
)

// guestImage returns a directory with vmlinuz, root.img, debian/ and manifest.json:
// $CLOAK_IMAGE_DIR (make builds it), or one built now with cloak-image.
func guestImage(t testing.TB) string {
	t.Helper()
	imageOnce.Do(func() {
		if d := os.Getenv("CLOAK_IMAGE_DIR"); d != "" {
			imageDir = d
			return
		}
		dir, err := os.MkdirTemp("", "cloak-image")
		if err != nil {
			imageErr = err
			return
		}
		cmd := exec.Command("go", "run", "./cmd/cloak-image", "build", "--out", dir)
		cmd.Dir = "../.."
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			imageErr = fmt.Errorf("cloak-image build: %v\n%s", err, out.String())
			return
		}
		imageDir = dir
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imageDir
}

type manifest struct {
	Cmdline string `json:"cmdline"`
}

// bootVM starts the guest image under QEMU (TCG here, KVM where usable) with
// user-mode networking and the virtio-serial agent channel. The test stops
// it and checks that no QEMU process or socket is left.
func bootVM(t testing.TB) *qemu.VM {
	t.Helper()
	dir := guestImage(t)
	return bootVMWith(t, imageBoot(t, dir))
}

// guestBoot is what QEMU boots: a kernel, an initrd and a root disk when
// there are, and the kernel command line.
type guestBoot struct{ Kernel, Initrd, RootDisk, Cmdline string }

// imageBoot is the image's default boot: Cloak's kernel, no initrd, the
// verified root disk, the manifest's command line (with its root hash).
func imageBoot(t testing.TB, dir string) guestBoot {
	return guestBoot{Kernel: filepath.Join(dir, "vmlinuz"), RootDisk: filepath.Join(dir, "root.img"), Cmdline: imageCmdline(t, dir)}
}

func imageCmdline(t testing.TB, dir string) string {
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil || m.Cmdline == "" {
		t.Fatalf("manifest.json: no cmdline (%v)", err)
	}
	return m.Cmdline
}

func bootVMWith(t testing.TB, g guestBoot) *qemu.VM {
	t.Helper()
	vm, _ := bootVMConfig(t, g, nil)
	return vm
}

// bootVMConfig boots g on the tests' standard VM (q35, 2
// vCPUs, 1 GiB, virtio-serial agent, user-mode network), changed by change
// when it is not nil. Cleanup stops the VM and checks that its QEMU and run
// directory are gone; a failed test shows the guest console (and the swtpm
// log of a vTPM).
func bootVMConfig(t testing.TB, g guestBoot, change func(*qemu.Config)) (*qemu.VM, qemu.Config) {
	t.Helper()
	run := filepath.Join(t.TempDir(), "vm")
	console := filepath.Join(t.TempDir(), "console.log")
	cfg := qemu.Config{
		Machine: qemu.MachineQ35, Accel: qemu.AccelAuto, VCPUs: 2, MemoryMiB: 1024,
		Kernel: g.Kernel, Initrd: g.Initrd, RootDisk: g.RootDisk, Cmdline: g.Cmdline,
		ConsoleLog: console, RunDir: run,
		Agent:   qemu.Agent{Kind: qemu.AgentVirtioSerial},
		Network: qemu.Network{Kind: qemu.NetworkUser},
		TEE:     qemu.TEE{Kind: qemu.TEENone},
	}
	if change != nil {
		change(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vm, err := qemu.Start(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	pid := vm.Pid()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := vm.Stop(ctx); err != nil {
			t.Errorf("stop VM: %v", err)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("QEMU pid %d still exists after Stop (kill 0: %v)", pid, err)
		}
		if _, err := os.Stat(run); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("VM run dir %s left behind", run)
		}
		if t.Failed() {
			if b, err := os.ReadFile(console); err == nil {
				t.Logf("guest console:\n%s", tailLines(string(b), 60))
			}
			if cfg.TPM.StateDir != "" {
				if b, err := os.ReadFile(cfg.SwtpmLog()); err == nil {
					t.Logf("swtpm log:\n%s", tailLines(string(b), 20))
				}
			}
		}
	})
	return vm, cfg
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// connectAgent waits until the agent answers Check, then returns a client.
func connectAgent(t testing.TB, vm *qemu.VM) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := dialReadyAgent(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent answered Check %.1fs after QEMU start", time.Since(start).Seconds())
	t.Cleanup(func() { c.Close() })
	return c
}

// dialReadyAgent waits for the agent channel, keeps the connection the agent
// accepted, and returns a client once Check has answered on it.
func dialReadyAgent(ctx context.Context, vm *qemu.VM) (*agent.Client, error) {
	conn, err := vm.ConnectAgent(ctx)
	if err != nil {
		return nil, err
	}
	return agent.Connect(ctx, conn, vm.DialAgent)
}

// sandboxRequest is a sandbox on the user-mode network QEMU gives the guest.
func sandboxRequest(initdata []byte) *agentapi.CreateSandboxRequest {
	return &agentapi.CreateSandboxRequest{
		SandboxId: "vmtest", Hostname: "cloak-vmtest",
		DnsServers: []string{"10.0.2.3"},
		Interfaces: []*agentapi.Interface{{Name: "eth0", Addresses: []string{"10.0.2.15/24"}}},
		Routes:     []*agentapi.Route{{Destination: "default", Gateway: hostFromGuest, Device: "eth0"}},
		Initdata:   initdata,
	}
}

// registryOptions maps the loopback registry to the address the guest
// reaches it at.
func registryOptions(registryHost string) *agentapi.RegistryOptions {
	_, port, _ := net.SplitHostPort(registryHost)
	return &agentapi.RegistryOptions{
		InsecureRegistries: []string{registryHost},
		Mirrors:            map[string]string{registryHost: "http://" + hostFromGuest + ":" + port},
	}
}

// containerSpec is a minimal OCI runtime spec as a container manager would
// send it (the agent supplies the rootfs).
func containerSpec(t *testing.T, args ...string) []byte {
	return containerSpecWith(t, nil, args...)
}

// containerSpecWith is containerSpec with a change applied to the spec.
func containerSpecWith(t *testing.T, change func(*specs.Spec), args ...string) []byte {
	spec := specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args, Cwd: "/", Env: []string{"PATH=/bin"},
			User: specs.User{UID: 0, GID: 0},
			Capabilities: &specs.LinuxCapabilities{
				Bounding: []string{"CAP_KILL", "CAP_CHOWN"}, Effective: []string{"CAP_KILL", "CAP_CHOWN"},
				Permitted: []string{"CAP_KILL", "CAP_CHOWN"},
			},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "container",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}},
		},
	}
	if change != nil {
		change(&spec)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runContainer creates and starts a container, and returns a function that
// waits for its output and exit status.
func runContainer(t *testing.T, ctx context.Context, c *agent.Client, id, image string, args ...string) func() (string, int32) {
	t.Helper()
	return runContainerSpec(t, ctx, c, id, image, containerSpec(t, args...))
}

func runContainerSpec(t *testing.T, ctx context.Context, c *agent.Client, id, image string, spec []byte) func() (string, int32) {
	t.Helper()
	if _, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: id, Image: image, OciSpec: spec}); err != nil {
		t.Fatalf("CreateContainer %s: %v", id, err)
	}
	var out bytes.Buffer
	attached := make(chan error, 1)
	go func() { attached <- c.Attach(ctx, id, "", nil, &out, &out) }()
	if _, err := c.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
	return func() (string, int32) {
		w, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("WaitProcess %s: %v", id, err)
		}
		if err := <-attached; err != nil {
			t.Fatalf("stdio of %s: %v", id, err)
		}
		return out.String(), w.ExitStatus
	}
}

// TestVMContainerLifecycle boots the Cloak guest image, pulls a busybox
// image from a loopback registry inside the guest and runs containers in it.
func TestVMContainerLifecycle(t *testing.T) {
	reg := startRegistry(t)
	ref := pushBusybox(t, reg)
	vm := bootVM(t)
	c := connectAgent(t, vm)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	v, err := c.Version(ctx, &agentapi.VersionRequest{})
	if err != nil || v.ApiVersion != "v1" {
		t.Fatalf("Version: %v %v", v, err)
	}
	gs, err := c.GuestStats(ctx, &agentapi.GuestStatsRequest{})
	if err != nil || gs.Cpus != 2 || gs.MemTotalBytes < 512<<20 || gs.MemTotalBytes > 1<<30 || gs.MemAvailableBytes == 0 {
		t.Fatalf("GuestStats of a 2-vCPU 1 GiB guest: %+v %v", gs, err)
	}
	if _, err := c.CreateSandbox(ctx, sandboxRequest(nil)); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	pulled, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: ref, Registry: registryOptions(reg)})
	if err != nil {
		t.Fatalf("PullImage: %v", err)
	}
	if pulled.ManifestDigest == "" || pulled.Encrypted || len(pulled.LayerDigests) != 1 {
		t.Fatalf("PullImage answer %+v", pulled)
	}

	wait := runContainer(t, ctx, c, "echo", ref, "/bin/echo", "hello from the guest")
	if out, code := wait(); out != "hello from the guest\n" || code != 0 {
		t.Fatalf("echo container: output %q exit %d", out, code)
	}
	wait = runContainer(t, ctx, c, "fail", ref, "/bin/sh", "-c", "echo oops >&2; exit 3")
	if out, code := wait(); out != "oops\n" || code != 3 {
		t.Fatalf("failing container: output %q exit %d", out, code)
	}

	// A long-running container: drop the agent connection and reconnect
	// (containers keep running), exec into it, then kill it.
	if _, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "sleeper", Image: ref, OciSpec: containerSpec(t, "/bin/sleep", "600")}); err != nil {
		t.Fatalf("CreateContainer sleeper: %v", err)
	}
	if _, err := c.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: "sleeper"}); err != nil {
		t.Fatalf("StartContainer sleeper: %v", err)
	}
	old := c
	c, err = agent.Dial(vm.DialAgent)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	old.Close()
	if _, err := c.Check(ctx, &agentapi.CheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("Check after reconnecting: %v", err)
	}
	if pids, err := c.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: "sleeper"}); err != nil || len(pids.Pids) == 0 {
		t.Fatalf("sleeper after reconnecting: %v %v", pids, err)
	}
	if _, err := c.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: "sleeper", ExecId: "cat", Process: mustJSON(t, specs.Process{
		Args: []string{"/bin/cat", "/etc/recipe.txt"}, Cwd: "/", Env: []string{"PATH=/bin"},
	})}); err != nil {
		t.Fatalf("ExecProcess: %v", err)
	}
	var execOut bytes.Buffer
	if err := c.Attach(ctx, "sleeper", "cat", nil, &execOut, &execOut); err != nil {
		t.Fatal(err)
	}
	if w, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "sleeper", ExecId: "cat"}); err != nil || w.ExitStatus != 0 || execOut.String() != "the secret recipe\n" {
		t.Fatalf("exec: %q exit %v err %v", execOut.String(), w, err)
	}
	if _, err := c.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: "sleeper", Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatalf("SignalProcess: %v", err)
	}
	if w, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "sleeper"}); err != nil || w.ExitStatus != 128+int32(syscall.SIGKILL) {
		t.Fatalf("killed container: %v %v, want exit status %d", w, err, 128+syscall.SIGKILL)
	}
	// TTY: the terminal size set with ResizePty reaches the process.
	if _, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "tty", Image: ref,
		OciSpec: containerSpecWith(t, func(s *specs.Spec) { s.Process.Terminal = true },
			"/bin/sh", "-c", `while [ "$(stty size)" != "40 100" ]; do sleep 0.1; done; echo resized`)}); err != nil {
		t.Fatalf("CreateContainer tty: %v", err)
	}
	var ttyOut bytes.Buffer
	ttyDone := make(chan error, 1)
	go func() { ttyDone <- c.Attach(ctx, "tty", "", nil, &ttyOut, nil) }()
	if _, err := c.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: "tty"}); err != nil {
		t.Fatalf("StartContainer tty: %v", err)
	}
	if _, err := c.ResizePty(ctx, &agentapi.ResizePtyRequest{ContainerId: "tty", Rows: 40, Columns: 100}); err != nil {
		t.Fatalf("ResizePty: %v", err)
	}
	if w, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "tty"}); err != nil || w.ExitStatus != 0 {
		t.Fatalf("tty container: %v %v", w, err)
	}
	if err := <-ttyDone; err != nil || !strings.Contains(ttyOut.String(), "resized\r\n") {
		t.Fatalf("tty output %q (%v), want \"resized\" with a terminal's CRLF", ttyOut.String(), err)
	}

	// OOM: a container over its memory limit is killed and reported. (A
	// child killed while init lives is not a stable test: the kernel may
	// kill init as well while the child's memory is reclaimed; the cgroup
	// watcher has its own test, TestWatchOOMCgroup2.)
	oomCtx, stopOOM := context.WithTimeout(ctx, 90*time.Second)
	defer stopOOM()
	events, err := c.OOMEvents(oomCtx, &agentapi.OOMEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	limit := int64(32 << 20)
	waitOOM := runContainerSpec(t, ctx, c, "hog", ref, containerSpecWith(t, func(s *specs.Spec) {
		s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	}, "/bin/sh", "-c", `x=$(head -c 200000000 /dev/zero | tr '\0' a); echo survived`))
	if out, code := waitOOM(); code != 128+int32(syscall.SIGKILL) || strings.Contains(out, "survived") {
		t.Fatalf("memory hog: output %q exit %d, want killed by the OOM killer", out, code)
	}
	ev, err := events.Recv()
	if err != nil || ev.ContainerId != "hog" {
		t.Fatalf("OOM event: %v %v, want one for container hog", ev, err)
	}

	for _, id := range []string{"echo", "fail", "sleeper", "tty", "hog"} {
		if _, err := c.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("RemoveContainer %s: %v", id, err)
		}
	}

	// DestroySandbox powers the guest off: QEMU exits by itself.
	if _, err := c.DestroySandbox(ctx, &agentapi.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	select {
	case <-vm.Exited():
	case <-time.After(60 * time.Second):
		t.Fatal("QEMU still running 60s after DestroySandbox")
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reasonOf returns the agentapi reason of a gRPC error from the agent.
func reasonOf(err error) string { return agentapi.ReasonOf(err) }

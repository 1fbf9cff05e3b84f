package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cloak-containers/cloak/internal/testutil"
)

// CRI runtime handlers the tests configure.
const (
	handlerRunc          = "runc"
	handlerCloak         = "cloak"
	handlerCloakEmulated = "cloak-emulated"
	// criGateway is the CNI bridge's address in containerd's namespace:
	// the pods' default gateway, where the registry mirror for guests
	// listens.
	criGateway = "10.88.0.1"
	criSubnet  = "10.88.0.0/16"
)

var criToolsScript = &depsScript{script: "./ci/cri-deps.sh"}

// criTools returns the directory holding crictl and critest, built once into
// the cache by ci/cri-deps.sh (which also installs Debian's CNI plugins).
func criTools(t *testing.T) string {
	t.Helper()
	return criToolsScript.get(t, "build crictl/critest and install the CNI plugins")
}

// criOptions shapes the containerd a CRI test starts.
type criOptions struct {
	// cloak configures the cloak and cloak-emulated handlers (this needs the
	// guest image); without it only runc exists.
	cloak bool
	// snapshotters sets a handler's `snapshotter`; handlers not named use
	// overlayfs. This is the hook for the guest-pull snapshotter
	// (cloak-snapshotter): name it for the cloak handlers here and declare
	// its proxy plugin in extraConfig.
	snapshotters map[string]string
	// extraConfig is appended to containerd's config.toml, e.g. a
	// [proxy_plugins.cloak-snapshotter] section.
	extraConfig string
	// extraImages pushes more images to the test registry before
	// containerd starts.
	extraImages func(t *testing.T, registryHost string)
	// guestPull runs cloak-snapshotter and makes it the cloak handlers'
	// snapshotter, for their containers and for image pulls on their
	// behalf (runtime_platforms): the host never fetches their layers.
	guestPull bool
	// registryAliases are registries (e.g. registry.k8s.io) that containerd
	// and the guests reach as the test registry, by hosts.toml and cloak's
	// [registry] mirrors: images keep their public names, and no traffic
	// leaves the machine.
	registryAliases []string
	// cloakExtra is TOML added to the cloak-emulated handler's cloak
	// configuration before its [registry] table: top-level keys (e.g.
	// emulated_snp_dir) and then tables (e.g. [kbs]).
	cloakExtra string
}

// criEnv is a containerd with the CRI plugin owned by one test. containerd
// runs in a network namespace the test created, so CNI's bridge (cni0,
// criGateway), its routes and sysctls never touch the host's namespace; a
// proxy in that namespace serves the test registry (on the host's loopback)
// at 127.0.0.1:PORT for containerd's pulls and at criGateway:PORT for the
// guests on the pod network.
type criEnv struct {
	dir, address, state string
	crictlBin, toolsDir string
	bin                 string // containerd, ctr, runc
	ns                  netns.NsHandle
	nsHandle            *netlink.Handle
	log                 string
	registryHost        string // 127.0.0.1:PORT, the same in containerd's namespace
	busybox, pause      string // image references
	runDir              string // the cloak VMs' run dirs live here
	consoleDir          string
	cloakConfigs        map[string]string // handler -> cloak config file
	snapshotterRoot     string            // cloak-snapshotter's root, with guestPull
}

// startCRI starts a registry holding busybox and the pause image, and a
// containerd with the CRI plugin in a network namespace of its own.
func startCRI(t *testing.T, opts criOptions) *criEnv {
	t.Helper()
	bin := containerdDeps(t)
	tools := criTools(t)
	var imageDir string
	e := &criEnv{bin: bin, toolsDir: tools, crictlBin: filepath.Join(tools, "crictl"), ns: netns.None()}
	path := bin + ":" + os.Getenv("PATH")
	if opts.cloak {
		imageDir = guestImage(t)
		path = buildShim(t) + ":" + path
	}
	e.registryHost = startRegistry(t)
	e.busybox = pushBusybox(t, e.registryHost)
	e.pause = pushPause(t, e.registryHost)
	if opts.extraImages != nil {
		opts.extraImages(t, e.registryHost)
	}
	_, port, err := net.SplitHostPort(e.registryHost)
	if err != nil {
		t.Fatal(err)
	}

	// Short: containerd's sockets and the VMs' run dirs live here.
	if e.dir, err = os.MkdirTemp("", "crid"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(e.dir) })
	e.address = filepath.Join(e.dir, "c.sock")
	e.state = filepath.Join(e.dir, "state")
	e.log = filepath.Join(e.dir, "containerd.log")
	e.runDir = filepath.Join(e.dir, "vm")
	e.consoleDir = filepath.Join(e.dir, "console")
	registries := append([]string{e.registryHost}, opts.registryAliases...)
	dirs := []string{e.runDir, e.consoleDir, filepath.Join(e.dir, "cni")}
	for _, r := range registries {
		dirs = append(dirs, filepath.Join(e.dir, "certs.d", r))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(e.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Plain HTTP to the loopback registry (through the namespace's proxy);
	// server replaces the aliases' public endpoints.
	var mirrors []string
	for _, r := range registries {
		write(filepath.Join("certs.d", r, "hosts.toml"), fmt.Sprintf(`server = "http://%[1]s"
[host."http://%[1]s"]
  capabilities = ["pull", "resolve"]
`, e.registryHost))
		mirrors = append(mirrors, fmt.Sprintf(`%q = "http://%s:%s"`, r, criGateway, port))
	}
	insecure, err := json.Marshal(registries)
	if err != nil {
		t.Fatal(err)
	}
	// go-cni adds the loopback plugin (from bin_dirs) by itself; host-local
	// keeps its leases in the test's dir instead of /var/lib/cni.
	write(filepath.Join("cni", "10-cloak-test.conflist"), fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "cloak-test",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
`, filepath.Join(e.dir, "ipam"), criSubnet, criGateway))
	e.cloakConfigs = map[string]string{}
	if opts.cloak {
		for handler, tee := range map[string]string{handlerCloak: "none", handlerCloakEmulated: "emulated"} {
			extra := ""
			if handler == handlerCloakEmulated && opts.cloakExtra != "" {
				extra = strings.TrimSuffix(opts.cloakExtra, "\n") + "\n"
			}
			if handler == handlerCloakEmulated && !strings.Contains(opts.cloakExtra, "[kbs]") {
				// A confidential handler runs only pods with an agent policy.
				extra += fmt.Sprintf("[kbs]\ninitdata_file = %q\n", write("cloak-emulated-initdata.toml", string(emulatedInitdata("CRI pods without a KBS"))))
			}
			// The guest is on the pod network: it reaches the registry
			// through the proxy on the bridge gateway.
			e.cloakConfigs[handler] = write(handler+".toml", fmt.Sprintf(`image_dir = %q
tee = %q
vcpus = 1
memory_mib = 512
run_dir = %q
console_log_dir = %q
agent_timeout_seconds = 120
%s[registry]
insecure = %s
mirrors = { %s }
`, imageDir, tee, e.runDir, e.consoleDir, extra, insecure, strings.Join(mirrors, ", ")))
		}
	}
	var platforms strings.Builder
	if opts.guestPull && opts.cloak {
		snap := startSnapshotter(t)
		e.snapshotterRoot = snap.root
		opts.extraConfig = guestPullConfig(snap.address) + opts.extraConfig
		opts.snapshotters = map[string]string{}
		for _, handler := range []string{handlerCloak, handlerCloakEmulated} {
			opts.snapshotters[handler] = cloakSnapshotter
			fmt.Fprintf(&platforms, `  [plugins."io.containerd.cri.v1.images".runtime_platforms.%s]
    snapshotter = %q
`, handler, cloakSnapshotter)
		}
	}
	snapshotter := func(handler string) string {
		if s := opts.snapshotters[handler]; s != "" {
			return s
		}
		return "overlayfs"
	}
	var runtimes strings.Builder
	fmt.Fprintf(&runtimes, `
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = %q
      snapshotter = %q
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %q
`, runcRuntime, snapshotter(handlerRunc), filepath.Join(bin, "runc"))
	for _, handler := range []string{handlerCloak, handlerCloakEmulated} {
		if cfg, ok := e.cloakConfigs[handler]; ok {
			fmt.Fprintf(&runtimes, `
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s]
      runtime_type = %q
      snapshotter = %q
      options = { ConfigPath = %q }
`, handler, cloakRuntime, snapshotter(handler), cfg)
		}
	}
	conf := write("config.toml", fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = %q
%s[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE here: a negative OOM score cannot be set.
  restrict_oom_score_adj = true
  # Pod netns bind mounts in the test's dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
%s
%s`, filepath.Join(e.dir, "root"), e.state, e.address, e.address+".ttrpc", e.pause,
		filepath.Join(e.dir, "certs.d"), platforms.String(), filepath.Join(e.dir, "cni"), runtimes.String(), opts.extraConfig))
	write("crictl.yaml", fmt.Sprintf("runtime-endpoint: unix://%[1]s\nimage-endpoint: unix://%[1]s\ntimeout: 180\npull-image-on-create: true\n", e.address))

	e.ns, e.nsHandle = newCRINetNS(t)
	serveProxyIn(t, e.ns, "0.0.0.0:"+port, e.registryHost)

	logf, err := os.Create(e.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(bin, "containerd"), "--config", conf, "--log-level", "debug")
	cmd.Env = append(os.Environ(), "PATH="+path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := startIn(e.ns, cmd); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Errorf("containerd did not stop on SIGTERM; killing it")
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			e.dumpLogs(t)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := e.crictl(t, "info"); err == nil {
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(e.log)
			t.Fatalf("containerd exited at start:\n%s", tailLines(string(b), 40))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(e.log)
			t.Fatalf("containerd's CRI did not answer within 30s:\n%s", tailLines(string(b), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Runs before containerd stops (cleanups run last-in first-out): a test
	// that failed halfway leaves no pod, shim or VM behind.
	t.Cleanup(func() { e.removeAllPods(t) })
	return e
}

// dumpLogs logs the tails of containerd's log and the guest consoles.
func (e *criEnv) dumpLogs(t *testing.T) {
	t.Helper()
	if b, err := os.ReadFile(e.log); err == nil {
		t.Logf("containerd log (tail):\n%s", tailLines(string(b), 80))
	}
	logs, _ := filepath.Glob(filepath.Join(e.consoleDir, "*.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			t.Logf("guest console %s (tail):\n%s", filepath.Base(l), tailLines(string(b), 30))
		}
	}
}

// removeAllPods force-removes every pod sandbox (and its containers).
func (e *criEnv) removeAllPods(t *testing.T) {
	t.Helper()
	r, err := e.crictl(t, "pods", "-q")
	if err != nil {
		t.Errorf("list pods: %v", err)
		return
	}
	for _, id := range strings.Fields(r.stdout) {
		t.Logf("removing pod %s left by the test", id)
		if _, err := e.crictl(t, "rmp", "--force", id); err != nil {
			t.Errorf("remove pod %s: %v", id, err)
		}
	}
}

// crictl runs crictl against the test's containerd, in containerd's network
// namespace (exec and port-forward streams are served on its loopback); err
// is set when crictl could not run or exited non-zero.
func (e *criEnv) crictl(t *testing.T, args ...string) (ctrResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.crictlBin, append([]string{"--config", filepath.Join(e.dir, "crictl.yaml")}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := startIn(e.ns, cmd)
	if err == nil {
		err = cmd.Wait()
	}
	return commandResult("crictl", args, err, &out, &errOut)
}

// mustCrictl is crictl that fails the test on a non-zero exit, and returns
// its trimmed stdout.
func (e *criEnv) mustCrictl(t *testing.T, args ...string) string {
	t.Helper()
	r, err := e.crictl(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(r.stdout)
}

// writeJSON writes v as a JSON file in the test's dir (crictl's pod and
// container configs) and returns its path.
func (e *criEnv) writeJSON(t *testing.T, name string, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// podConfig is a CRI PodSandboxConfig as crictl reads it.
// podConfig is a CRI PodSandboxConfig for a pod of the runtime handler.
// The handler is also an annotation: crictl does not send it with image
// pulls, and containerd reads it there to pick the handler's snapshotter
// (kubelet sends it with the RuntimeClassInImageCriApi feature gate).
func (e *criEnv) podConfig(t *testing.T, name, handler string) string {
	t.Helper()
	logDir := filepath.Join(e.dir, "logs", name)
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return e.writeJSON(t, "pod-"+name+".json", map[string]any{
		"metadata": map[string]any{"name": name, "namespace": "cloak-test", "uid": name + "-uid", "attempt": 0},
		// kubelet sets the pod name as hostname.
		"hostname":      name,
		"log_directory": logDir,
		"annotations":   map[string]string{"io.containerd.cri.runtime-handler": handler},
		// A network and an IPC sysctl, as kubelet passes a pod's
		// securityContext.sysctls.
		"linux": map[string]any{"sysctls": map[string]string{"net.core.somaxconn": "1234", "kernel.shm_rmid_forced": "1"}},
	})
}

// containerConfig is a CRI ContainerConfig running command in busybox.
func (e *criEnv) containerConfig(t *testing.T, pod, name string, command ...string) string {
	t.Helper()
	return e.writeJSON(t, "ctr-"+pod+"-"+name+".json", map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": e.busybox},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
}

// waitLogs waits until `crictl logs id` prints want (containers write
// asynchronously to their log) and returns what it printed.
func (e *criEnv) waitLogs(t *testing.T, id, want string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := e.crictl(t, "logs", id)
		if err == nil && strings.Contains(r.stdout, want) {
			return r.stdout
		}
		if time.Now().After(deadline) {
			t.Fatalf("crictl logs %s: %q (err %v), want it to contain %q", id, r.stdout, err, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// qemuPids lists the QEMU processes of the cloak VMs this containerd runs.
func (e *criEnv) qemuPids(t *testing.T) []int {
	t.Helper()
	var qemus []int
	for _, pid := range pidsWithArg(t, e.runDir) {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err == nil && strings.Contains(filepath.Base(exe), "qemu-system") {
			qemus = append(qemus, pid)
		}
	}
	return qemus
}

// assertClean checks that nothing of a removed pod is left: no QEMU, no
// shim, no mount under containerd's dirs, no pod netns, no veth or TAP in
// containerd's namespace, and no VM run dir.
func (e *criEnv) assertClean(t *testing.T) {
	t.Helper()
	waitNoPids(t, e.runDir, 20*time.Second)
	waitNoPids(t, "\x00-address\x00"+e.address+"\x00", 20*time.Second)
	if left, _ := os.ReadDir(e.runDir); len(left) > 0 {
		t.Errorf("VM run dirs left in %s: %v", e.runDir, left)
	}
	if mounts := mountsUnder(t, e.dir); len(mounts) > 0 {
		t.Errorf("mounts left under containerd's dir %s: %v", e.dir, mounts)
	}
	if nss, _ := filepath.Glob(filepath.Join(e.state, "*", "netns", "*")); len(nss) > 0 {
		t.Errorf("pod network namespaces left: %v", nss)
	}
	links, err := e.nsHandle.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		switch l.(type) {
		case *netlink.Veth, *netlink.Tuntap:
			t.Errorf("%s %s left in containerd's namespace", l.Type(), l.Attrs().Name)
		}
	}
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		if mp := fields[4]; mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Strings(mounts)
	return mounts
}

// newCRINetNS creates an unnamed network namespace with lo up for
// containerd, and a netlink handle in it; the namespace goes away with
// containerd and the test's handles.
func newCRINetNS(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	ns := netns.None()
	if err := onThreadIn(netns.None(), func() error {
		var err error
		ns, err = netns.New()
		return err
	}); err != nil {
		t.Fatalf("create a network namespace for containerd: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return ns, h
}

// startIn starts cmd in the network namespace ns: the child inherits the
// namespace of the thread that forks it.
func startIn(ns netns.NsHandle, cmd *exec.Cmd) error {
	return onThreadIn(ns, cmd.Start)
}

// serveProxyIn serves, on addr in the namespace ns, a reverse proxy to the
// HTTP server target on the host's loopback.
func serveProxyIn(t *testing.T, ns netns.NsHandle, addr, target string) {
	t.Helper()
	var l net.Listener
	if err := onThreadIn(ns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("registry proxy in containerd's namespace: %v", err)
	}
	srv := &http.Server{
		Handler:           httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target}),
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// serveTCPProxyIn listens on addr in the namespace ns and forwards each
// connection, bytes as they are (TLS passes through), to target on the
// host's loopback; it returns the listening address. The cleanup closes the
// listener and every open connection.
func serveTCPProxyIn(t *testing.T, ns netns.NsHandle, addr, target string) string {
	t.Helper()
	var l net.Listener
	if err := onThreadIn(ns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("TCP proxy in containerd's namespace on %s: %v", addr, err)
	}
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if add && open == nil {
			return false // closed
		}
		if add {
			open[c] = true
		} else if open != nil {
			delete(open, c)
		}
		return true
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// Dialed from a thread in the host's namespace.
				up, err := net.DialTimeout("tcp", target, 10*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				if !track(c, true) {
					return
				}
				defer track(c, false)
				copied := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); copied <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); copied <- struct{}{} }()
				<-copied
			}()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		open = nil
		mu.Unlock()
	})
	return l.Addr().String()
}

// pushPause builds testdata/cri/pause statically and pushes it as the
// sandbox image.
func pushPause(t *testing.T, registryHost string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pause")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/cri/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the pause program: %v\n%s", err, out)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "pause", Mode: 0o755, Size: int64(len(prog))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(prog); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(testutil.BytesOpener(buf.Bytes()), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	img := busyboxImage(t, layer, mutate.Addendum{})
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Cmd = nil
	cf.Config.Entrypoint = []string{"/pause"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref := registryHost + "/pause:3.10"
	push(t, ref, img)
	return ref
}

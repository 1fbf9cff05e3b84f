package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The pod network as CNI's bridge plugin would leave it, reduced to one
// veth: the pod end is eth0 in the pod netns, the peer (the "bridge") is in
// a second namespace the test owns, so no address or route touches the
// host's namespace.
const (
	podAddr    = "10.88.0.5/16"
	podGateway = "10.88.0.1"
	peerLink   = "cloakpeer0"
	webBody    = "hello from the pod network\n"
)

// TestContainerdPodNetwork runs cloak tasks that join a pod network
// namespace (`ctr run --with-ns network:PATH`, what CRI does with the netns
// CNI set up): the guest must be on the pod network with the pod's address,
// and the shim must leave nothing in the netns after the task is deleted or
// after its shim was killed.
//
// Image pulls: the guest is on the pod network, not QEMU's user-mode one,
// so the registry mirror is a proxy listening on the gateway address in the
// peer namespace, forwarding to the test registry on the host's loopback.
func TestContainerdPodNetwork(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e, imageDir, registryHost, ref := containerdWithBusybox(t)

	pod := newPodNetNS(t)
	web := serveIn(t, pod.peer, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, webBody) }))
	mirror := serveIn(t, pod.peer, httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: registryHost}))

	runDir, err := os.MkdirTemp("", "cloakrun")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	consoleDir := t.TempDir()
	cloakConfig := filepath.Join(t.TempDir(), "cloak.toml")
	if err := os.WriteFile(cloakConfig, []byte(fmt.Sprintf(`image_dir = %q
vcpus = 1
memory_mib = 512
run_dir = %q
console_log_dir = %q
agent_timeout_seconds = 120
[registry]
insecure = [%q]
mirrors = { %q = "http://%s" }
`, imageDir, runDir, consoleDir, registryHost, registryHost, mirror)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(consoleDir, "*.log"))
		for _, l := range logs {
			if b, err := os.ReadFile(l); err == nil {
				t.Logf("guest console %s (tail):\n%s", filepath.Base(l), tailLines(string(b), 30))
			}
		}
	})
	cloakArgs := []string{"--runtime", cloakRuntime, "--runtime-config-path", cloakConfig, "--with-ns", "network:" + pod.path}

	t.Run("traffic from the guest", func(t *testing.T) {
		start := time.Now()
		args := append(append([]string{"run", "--rm"}, cloakArgs...), ref, "podnet",
			"sh", "-c", "wget -qO- http://"+web+"/ && ip -4 addr show")
		r, err := e.ctr(t, nil, args...)
		t.Logf("ctr run in the pod netns: exit %d in %.1fs", r.code, time.Since(start).Seconds())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(r.stdout, webBody) {
			t.Errorf("wget from the guest printed %q, want %q first", r.stdout, webBody)
		}
		if !strings.Contains(r.stdout, "inet "+podAddr) {
			t.Errorf("the guest does not have the pod address %s:\n%s", podAddr, r.stdout)
		}
		pod.assertClean(t)
	})

	t.Run("shim killed under a task", func(t *testing.T) {
		id := "podnet-shim-killed"
		e.mustCtr(t, append(append([]string{"run", "-d"}, cloakArgs...), ref, id, "sleep", "600")...)
		if taps := pod.taps(t); len(taps) != 1 {
			t.Fatalf("TAPs in the pod netns while the task runs: %v, want one", taps)
		}
		shims := pidsWithArg(t, "\x00-id\x00"+id+"\x00-address\x00"+e.address+"\x00")
		console := filepath.Join(consoleDir, ctrNamespace+"-"+id+".log")
		if len(shims) != 1 {
			t.Fatalf("want one shim for %s, found %v", id, shims)
		}
		if err := syscall.Kill(shims[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// containerd runs `containerd-shim-cloak-v2 delete`, which must
		// take the VM down and the TAP out of the netns.
		waitShimCleanup(t, e, id, console)
		pod.assertClean(t)
	})

	waitNoPids(t, runDir, 15*time.Second)
}

// podNetNS is a named pod network namespace and the namespace holding its
// veth peer, both removed by the test's cleanup.
type podNetNS struct {
	path       string
	pod, peer  netns.NsHandle
	podHandle  *netlink.Handle
	peerHandle *netlink.Handle
}

// newPodNetNS creates /var/run/netns/cloak-test-PID with eth0 (podAddr,
// default route via podGateway) and its veth peer in an unnamed namespace
// (podGateway/16).
func newPodNetNS(t *testing.T) *podNetNS {
	t.Helper()
	name := fmt.Sprintf("cloak-test-%d", os.Getpid())
	p := &podNetNS{path: filepath.Join("/var/run/netns", name), pod: netns.None(), peer: netns.None()}
	err := onThreadIn(netns.None(), func() error {
		var err error
		if p.pod, err = netns.NewNamed(name); err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		p.peer, err = netns.New()
		return err
	})
	t.Cleanup(func() {
		for _, h := range []*netlink.Handle{p.podHandle, p.peerHandle} {
			if h != nil {
				h.Close()
			}
		}
		// The unnamed peer namespace, and the veth with it, goes with its
		// last handle; the named one with its bind mount.
		p.peer.Close()
		p.pod.Close()
		if err := netns.DeleteNamed(name); err != nil && !os.IsNotExist(err) {
			t.Errorf("remove netns %s: %v", name, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.podHandle, err = netlink.NewHandleAt(p.pod); err != nil {
		t.Fatal(err)
	}
	if p.peerHandle, err = netlink.NewHandleAt(p.peer); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: peerLink, PeerNamespace: netlink.NsFd(p.peer)}
	if err := p.podHandle.LinkAdd(veth); err != nil {
		t.Fatalf("veth pair: %v", err)
	}
	setUp := func(h *netlink.Handle, name, addr string) {
		t.Helper()
		for _, n := range []string{"lo", name} {
			l, err := h.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			if n == name {
				a, err := netlink.ParseAddr(addr)
				if err != nil {
					t.Fatal(err)
				}
				if err := h.AddrAdd(l, a); err != nil {
					t.Fatalf("address %s on %s: %v", addr, n, err)
				}
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	setUp(p.podHandle, "eth0", podAddr)
	setUp(p.peerHandle, peerLink, podGateway+"/16")
	eth0, err := p.podHandle.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.podHandle.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(podGateway)}); err != nil {
		t.Fatalf("default route: %v", err)
	}
	return p
}

// taps lists the TAP devices in the pod netns.
func (p *podNetNS) taps(t *testing.T) []string {
	t.Helper()
	links, err := p.podHandle.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var taps []string
	for _, l := range links {
		if _, ok := l.(*netlink.Tuntap); ok {
			taps = append(taps, l.Attrs().Name)
		}
	}
	return taps
}

// assertClean checks that the pod netns is as CNI left it: no TAP, and no
// ingress qdisc on eth0 (the shim's redirect filter lives under it, so no
// qdisc means no filter).
func (p *podNetNS) assertClean(t *testing.T) {
	t.Helper()
	if taps := p.taps(t); len(taps) > 0 {
		t.Errorf("TAPs left in the pod netns: %v", taps)
	}
	eth0, err := p.podHandle.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 of the pod netns: %v", err)
	}
	qdiscs, err := p.podHandle.QdiscList(eth0)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qdiscs {
		if q.Type() == "ingress" {
			t.Errorf("ingress qdisc left on eth0: %v", q)
		}
	}
}

// serveIn serves h over HTTP on podGateway in the namespace ns and returns
// its address. The listening socket belongs to ns; the handler runs on any
// thread (a proxy's outgoing connections start from the host namespace).
func serveIn(t *testing.T, ns netns.NsHandle, h http.Handler) string {
	t.Helper()
	var l net.Listener
	if err := onThreadIn(ns, func() error {
		var err error
		l, err = net.Listen("tcp", net.JoinHostPort(podGateway, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return l.Addr().String()
}

// onThreadIn runs fn on a locked OS thread in namespace ns (netns.None():
// the current one, for fn to switch), then returns the thread to the
// host's namespace. A thread that cannot be switched back is never
// unlocked, so it exits with its goroutine instead of running other code
// in the wrong namespace.
func onThreadIn(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		host, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer host.Close()
		if ns.IsOpen() {
			if err := netns.Set(ns); err != nil {
				errc <- err
				return
			}
		}
		err = fn()
		if serr := netns.Set(host); serr != nil {
			errc <- fmt.Errorf("return to the host netns: %w (and %v)", serr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

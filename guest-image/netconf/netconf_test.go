package netconf

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
)

// inNewNamespaces runs f on a thread with its own network and UTS
// namespaces; the thread is never returned to the scheduler, so it dies
// with the namespaces.
func inNewNamespaces(t *testing.T, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET | unix.CLONE_NEWUTS); err != nil {
			t.Errorf("unshare: %v (needs root)", err)
			return
		}
		f()
	}()
	<-done
}

// apply applies req's network as the agent does: validated first.
func apply(req *agentapi.CreateSandboxRequest) error {
	cfg, err := hostinput.Sandbox(req)
	if err != nil {
		return err
	}
	return Apply(context.Background(), cfg.Network)
}

func TestApply(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root")
	}
	etcDir = t.TempDir()
	t.Cleanup(func() { etcDir = "/etc" })
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	inNewNamespaces(t, func() {
		// The guest NIC (one end of a veth pair: this kernel has no dummy
		// links), under a name other than the one requested.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "nic7", HardwareAddr: mac}, PeerName: "peer7"}); err != nil {
			t.Errorf("add veth pair: %v", err)
			return
		}
		req := &agentapi.CreateSandboxRequest{
			SandboxId: "pod-1", Hostname: "pod-1", DnsServers: []string{"10.0.2.3"}, DnsSearches: []string{"svc.cluster.local", "example"},
			Interfaces: []*agentapi.Interface{{Name: "eth0", Mac: mac.String(), Addresses: []string{"10.0.2.15/24"}, Mtu: 1400}},
			Routes: []*agentapi.Route{
				{Destination: "default", Gateway: "10.0.2.2"},
				{Destination: "192.168.5.0/24", Device: "eth0"},
			},
			// Per network namespace: the test's own.
			Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80"},
		}
		if err := apply(req); err != nil {
			t.Errorf("Apply: %v", err)
			return
		}
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			t.Errorf("eth0: %v", err)
			return
		}
		if link.Attrs().MTU != 1400 || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("eth0 mtu %d flags %v, want 1400 and up", link.Attrs().MTU, link.Attrs().Flags)
		}
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.0.2.15/24" {
			t.Errorf("addresses = %v, want 10.0.2.15/24", addrs)
		}
		routes, _ := netlink.RouteList(link, netlink.FAMILY_V4)
		var got []string
		for _, r := range routes {
			got = append(got, r.String())
		}
		all := strings.Join(got, "; ")
		if !strings.Contains(all, "Dst: 0.0.0.0/0") || !strings.Contains(all, "Gw: 10.0.2.2") || !strings.Contains(all, "Dst: 192.168.5.0/24") {
			t.Errorf("routes = %s, want default via 10.0.2.2 and 192.168.5.0/24", all)
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err != nil || strings.TrimSpace(string(b)) != "80" {
			t.Errorf("net.ipv4.ip_unprivileged_port_start = %q, %v; want 80", b, err)
		}
		var uts unix.Utsname
		unix.Uname(&uts)
		if h := unix.ByteSliceToString(uts.Nodename[:]); h != "pod-1" {
			t.Errorf("hostname = %q", h)
		}
		// A MAC no interface has.
		req.Interfaces[0].Mac = "02:00:00:00:00:99"
		if err := apply(req); err == nil || !strings.Contains(err.Error(), "no interface has MAC") {
			t.Errorf("error = %v, want no interface", err)
		}
	})
	if b, _ := os.ReadFile(filepath.Join(etcDir, "hostname")); string(b) != "pod-1\n" {
		t.Errorf("/etc/hostname = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(etcDir, "resolv.conf")); string(b) != "nameserver 10.0.2.3\nsearch svc.cluster.local example\n" {
		t.Errorf("resolv.conf = %q", b)
	}
}

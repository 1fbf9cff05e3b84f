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

	"github.com/cloak-containers/cloak/agentapi"
)

func TestValidate(t *testing.T) {
	ok := func() *agentapi.CreateSandboxRequest {
		return &agentapi.CreateSandboxRequest{
			Hostname: "pod-1.example", DnsServers: []string{"10.0.2.3", "fd00::3"}, DnsSearches: []string{"svc.cluster.local"},
			Interfaces: []*agentapi.Interface{{Name: "eth0", Mac: "02:00:00:00:00:01", Addresses: []string{"10.0.2.15/24", "fd00::15/64"}, Mtu: 1500}},
			Routes:     []*agentapi.Route{{Destination: "default", Gateway: "10.0.2.2"}, {Destination: "192.168.0.0/16", Device: "eth0"}},
		}
	}
	tests := []struct {
		name    string
		edit    func(*agentapi.CreateSandboxRequest)
		wantErr string
	}{
		{"valid", func(*agentapi.CreateSandboxRequest) {}, ""},
		{"net sysctls", func(r *agentapi.CreateSandboxRequest) {
			r.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.conf.eth0.rp_filter": "1"}
		}, ""},
		{"non-net sysctl", func(r *agentapi.CreateSandboxRequest) { r.Sysctls = map[string]string{"kernel.shm_rmid_forced": "1"} }, "only network sysctls"},
		{"sysctl path", func(r *agentapi.CreateSandboxRequest) { r.Sysctls = map[string]string{"net/../../kernel/x": "1"} }, "only network sysctls"},
		{"sysctl dotdot", func(r *agentapi.CreateSandboxRequest) { r.Sysctls = map[string]string{"net...x": "1"} }, "only network sysctls"},
		{"sysctl value newline", func(r *agentapi.CreateSandboxRequest) { r.Sysctls = map[string]string{"net.core.somaxconn": "1\n2"} }, "one line"},
		{"sysctl value long", func(r *agentapi.CreateSandboxRequest) {
			r.Sysctls = map[string]string{"net.core.somaxconn": strings.Repeat("1", 257)}
		}, "one line"},
		{"hostname chars", func(r *agentapi.CreateSandboxRequest) { r.Hostname = "a b" }, "hostname"},
		{"hostname long", func(r *agentapi.CreateSandboxRequest) { r.Hostname = strings.Repeat("a", 65) }, "limit is 64"},
		{"dns server", func(r *agentapi.CreateSandboxRequest) { r.DnsServers = []string{"dns.example"} }, "want an IP address"},
		{"dns count", func(r *agentapi.CreateSandboxRequest) {
			r.DnsServers = []string{"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"}
		}, "4 DNS servers"},
		{"search", func(r *agentapi.CreateSandboxRequest) { r.DnsSearches = []string{"bad domain"} }, "not a domain name"},
		{"iface name", func(r *agentapi.CreateSandboxRequest) { r.Interfaces[0].Name = "../eth0" }, "name"},
		{"iface name long", func(r *agentapi.CreateSandboxRequest) { r.Interfaces[0].Name = "abcdefghijklmnop" }, "1 to 15"},
		{"iface twice", func(r *agentapi.CreateSandboxRequest) { r.Interfaces = append(r.Interfaces, r.Interfaces[0]) }, "listed twice"},
		{"mac", func(r *agentapi.CreateSandboxRequest) { r.Interfaces[0].Mac = "zz" }, "MAC"},
		{"mtu", func(r *agentapi.CreateSandboxRequest) { r.Interfaces[0].Mtu = 10 }, "MTU 10"},
		{"address", func(r *agentapi.CreateSandboxRequest) { r.Interfaces[0].Addresses = []string{"10.0.2.15"} }, "want CIDR"},
		{"route dst", func(r *agentapi.CreateSandboxRequest) { r.Routes[1].Destination = "10.0.0.0" }, "want CIDR or"},
		{"route family", func(r *agentapi.CreateSandboxRequest) { r.Routes[1].Gateway = "fd00::1" }, "different IP families"},
		{"route nothing", func(r *agentapi.CreateSandboxRequest) { r.Routes[1].Device = "" }, "needs a gateway or a device"},
		{"default no gw", func(r *agentapi.CreateSandboxRequest) {
			r.Routes[0] = &agentapi.Route{Destination: "default", Device: "eth0"}
		}, "default route needs a gateway"},
		{"too many routes", func(r *agentapi.CreateSandboxRequest) {
			for range maxRoutes {
				r.Routes = append(r.Routes, r.Routes[0])
			}
		}, "routes, limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := ok()
			tc.edit(req)
			_, err := validate(req)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

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
			Hostname: "pod-1", DnsServers: []string{"10.0.2.3"}, DnsSearches: []string{"svc.cluster.local", "example"},
			Interfaces: []*agentapi.Interface{{Name: "eth0", Mac: mac.String(), Addresses: []string{"10.0.2.15/24"}, Mtu: 1400}},
			Routes: []*agentapi.Route{
				{Destination: "default", Gateway: "10.0.2.2"},
				{Destination: "192.168.5.0/24", Device: "eth0"},
			},
			// Per network namespace: the test's own.
			Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80"},
		}
		if err := Apply(context.Background(), req); err != nil {
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
		if err := Apply(context.Background(), req); err == nil || !strings.Contains(err.Error(), "no interface has MAC") {
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

func FuzzValidate(f *testing.F) {
	f.Add("pod-1", "10.0.2.3", "svc.local", "eth0", "02:00:00:00:00:01", "10.0.2.15/24", "default", "10.0.2.2", "")
	f.Add("", "", "", "e", "", "fd00::1/64", "fd00::/8", "", "e")
	f.Fuzz(func(t *testing.T, host, dns, search, name, mac, addr, dst, gw, dev string) {
		req := &agentapi.CreateSandboxRequest{Hostname: host, DnsServers: []string{dns}, DnsSearches: []string{search},
			Interfaces: []*agentapi.Interface{{Name: name, Mac: mac, Addresses: []string{addr}}},
			Routes:     []*agentapi.Route{{Destination: dst, Gateway: gw, Device: dev}}}
		cfg, err := validate(req)
		if err != nil {
			return
		}
		// Whatever passes must be safe to write into resolv.conf and
		// hand to netlink.
		if strings.ContainsAny(host+search+name+dev, " \n\t/") || len(cfg.interfaces[0].name) > 15 {
			t.Fatalf("accepted unsafe request %+v", req)
		}
		if r := cfg.routes[0]; !r.dst.IsValid() && !r.gw.IsValid() {
			t.Fatalf("accepted a default route without gateway")
		}
	})
}

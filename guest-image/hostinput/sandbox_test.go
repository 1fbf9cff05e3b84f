package hostinput

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/agentapi"
)

func TestSandbox(t *testing.T) {
	ok := func() *agentapi.CreateSandboxRequest {
		return &agentapi.CreateSandboxRequest{
			SandboxId: "pod1", Hostname: "pod-1.example", DnsServers: []string{"10.0.2.3", "fd00::3"}, DnsSearches: []string{"svc.cluster.local"},
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
		{"hostname long", func(r *agentapi.CreateSandboxRequest) { r.Hostname = strings.Repeat("a", 65) }, "hostname is 65 bytes, limit 64"},
		{"sandbox id", func(r *agentapi.CreateSandboxRequest) { r.SandboxId = "../x" }, "sandbox id"},
		{"initdata", func(r *agentapi.CreateSandboxRequest) { r.Initdata = make([]byte, maxInitdata+1) }, "initdata is"},
		{"fs tag", func(r *agentapi.CreateSandboxRequest) { r.SharedFsTag = "a/b" }, "shared_fs_tag"},
		{"long gateway", func(r *agentapi.CreateSandboxRequest) {
			r.Routes[0].Gateway = "fe80::1%" + strings.Repeat("x", maxShortString)
		}, "a network field is"},
		{"too many addresses", func(r *agentapi.CreateSandboxRequest) {
			r.Interfaces[0].Addresses = make([]string, maxAddresses+1)
		}, "17 addresses, limit is 16"},
		{"dns server", func(r *agentapi.CreateSandboxRequest) { r.DnsServers = []string{"dns.example"} }, "want an IP address"},
		{"dns count", func(r *agentapi.CreateSandboxRequest) {
			r.DnsServers = []string{"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"}
		}, "sandbox \"pod1\": network configuration: 4 DNS servers"},
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
			_, err := Sandbox(req)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (reasonOf(err) != agentapi.ReasonInvalidRequest || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error = %v, want INVALID_REQUEST %q", err, tc.wantErr)
			}
		})
	}
}

// TestSandboxNetwork pins the typed values netconf applies.
func TestSandboxNetwork(t *testing.T) {
	cfg, err := Sandbox(&agentapi.CreateSandboxRequest{
		SandboxId: "pod1", Hostname: "pod-1", DnsServers: []string{"10.0.2.3"}, DnsSearches: []string{"svc.cluster.local"},
		Interfaces: []*agentapi.Interface{{Name: "eth0", Mac: "02:00:00:00:00:01", Addresses: []string{"10.0.2.15/24"}, Mtu: 1500}},
		Routes:     []*agentapi.Route{{Destination: "default", Gateway: "10.0.2.2"}, {Destination: "192.168.1.7/16", Device: "eth0"}},
		Sysctls:    map[string]string{"net.ipv4.ip_forward": "0", "net.core.somaxconn": "1024"},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := cfg.Network
	if n.Hostname != "pod-1" || len(n.DNSServers) != 1 || n.DNSServers[0] != netip.MustParseAddr("10.0.2.3") || n.DNSSearches[0] != "svc.cluster.local" {
		t.Errorf("hostname %q, DNS %v %v", n.Hostname, n.DNSServers, n.DNSSearches)
	}
	if ifc := n.Interfaces[0]; ifc.Name != "eth0" || ifc.MAC.String() != "02:00:00:00:00:01" || ifc.MTU != 1500 || ifc.Addresses[0] != netip.MustParsePrefix("10.0.2.15/24") {
		t.Errorf("interface %+v", ifc)
	}
	if r := n.Routes[0]; r.Destination.IsValid() || r.Gateway != netip.MustParseAddr("10.0.2.2") {
		t.Errorf("default route %+v", r)
	}
	if r := n.Routes[1]; r.Destination != netip.MustParsePrefix("192.168.0.0/16") || r.Gateway.IsValid() || r.Device != "eth0" {
		t.Errorf("link route %+v, want 192.168.0.0/16 (masked) on eth0", r)
	}
	if len(n.Sysctls) != 2 || n.Sysctls[0].Key != "net.core.somaxconn" || n.Sysctls[1] != (Sysctl{"net.ipv4.ip_forward", "0"}) {
		t.Errorf("sysctls %v, want sorted by key", n.Sysctls)
	}
}

func TestPull(t *testing.T) {
	tests := []struct {
		name string
		req  *agentapi.PullImageRequest
		ok   bool
	}{
		{"ok", &agentapi.PullImageRequest{Image: "docker.io/library/busybox:1.36", Platform: "linux/amd64"}, true},
		{"empty", &agentapi.PullImageRequest{}, false},
		{"long reference", &agentapi.PullImageRequest{Image: strings.Repeat("a", maxImageRef+1)}, false},
		{"long platform", &agentapi.PullImageRequest{Image: "a", Platform: strings.Repeat("a", maxPlatform+1)}, false},
		{"many mirrors", &agentapi.PullImageRequest{Image: "a", Registry: &agentapi.RegistryOptions{InsecureRegistries: make([]string, maxListEntries+1)}}, false},
		{"long mirror", &agentapi.PullImageRequest{Image: "a", Registry: &agentapi.RegistryOptions{Mirrors: map[string]string{"docker.io": strings.Repeat("m", maxShortString+1)}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Pull(tt.req)
			if tt.ok != (err == nil) || !tt.ok && reasonOf(err) != agentapi.ReasonInvalidRequest {
				t.Errorf("Pull = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

package hostinput

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// SandboxConfig is what a valid CreateSandbox asks of the guest beyond its
// id, initdata and shared_fs_tag, which are checked and used as sent.
type SandboxConfig struct {
	Network *Network
}

// Network is the pod's validated network configuration.
type Network struct {
	Hostname    string // "" = leave the guest's
	DNSServers  []netip.Addr
	DNSSearches []string
	Interfaces  []Interface
	Routes      []Route
	Sysctls     []Sysctl // sorted by key
}

// Interface is a guest NIC to configure.
type Interface struct {
	Name      string
	MAC       net.HardwareAddr // nil = find the NIC by name
	Addresses []netip.Prefix
	MTU       int // 0 = leave the NIC's
}

// Route is a route to add.
type Route struct {
	Destination netip.Prefix // masked; invalid = default
	Gateway     netip.Addr   // invalid = link route
	Device      string       // "" = by gateway
}

// Sysctl is a network sysctl (net.*) to set.
type Sysctl struct{ Key, Value string }

var (
	hostnameLabel = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	ifaceName     = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)
	// A network sysctl: net. then dot-separated names (interface names may
	// hold - and _); never a path.
	netSysctl = regexp.MustCompile(`^net(\.[a-zA-Z0-9_-]{1,64}){1,8}$`)
)

// Sandbox validates CreateSandbox. Errors in the network configuration
// read "sandbox ID: network configuration: ...".
func Sandbox(req *agentapi.CreateSandboxRequest) (*SandboxConfig, error) {
	if err := ID("sandbox", req.GetSandboxId()); err != nil {
		return nil, err
	}
	if len(req.GetHostname()) > maxHostname {
		return nil, Invalid("hostname is %d bytes, limit %d", len(req.GetHostname()), maxHostname)
	}
	if len(req.GetInitdata()) > maxInitdata {
		return nil, Invalid("initdata is %d bytes, limit %d", len(req.GetInitdata()), maxInitdata)
	}
	if err := FSTag(req.GetSharedFsTag()); err != nil {
		return nil, err
	}
	n, err := network(req)
	if err != nil {
		return nil, Invalid("sandbox %q: network configuration: %v", req.GetSandboxId(), err)
	}
	return &SandboxConfig{Network: n}, nil
}

// network checks the counts first, then the length of every free-form
// string, then what each field means (CIDRs, MACs, routes).
func network(req *agentapi.CreateSandboxRequest) (*Network, error) {
	if err := networkBounds(req); err != nil {
		return nil, err
	}
	n := &Network{Hostname: req.GetHostname(), DNSSearches: req.GetDnsSearches()}
	for k, v := range req.GetSysctls() {
		if !netSysctl.MatchString(k) {
			return nil, fmt.Errorf("sysctl %q: only network sysctls (net.*) are set for the pod", Truncate(k))
		}
		if len(v) > maxSysctlValue || strings.ContainsAny(v, "\n\x00") {
			return nil, fmt.Errorf("sysctl %s: value of %d bytes: want one line of at most %d", k, len(v), maxSysctlValue)
		}
		n.Sysctls = append(n.Sysctls, Sysctl{k, v})
	}
	slices.SortFunc(n.Sysctls, func(a, b Sysctl) int { return strings.Compare(a.Key, b.Key) })
	if h := req.GetHostname(); h != "" {
		for _, label := range strings.Split(h, ".") {
			if !hostnameLabel.MatchString(label) {
				return nil, fmt.Errorf("hostname %q: want letters, digits and inner hyphens in dot-separated labels", h)
			}
		}
	}
	for _, s := range req.GetDnsServers() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("DNS server %q: want an IP address", s)
		}
		n.DNSServers = append(n.DNSServers, a)
	}
	for _, s := range req.GetDnsSearches() {
		if len(s) == 0 || len(s) > maxSearchLength {
			return nil, fmt.Errorf("DNS search domain %q: want 1 to %d bytes", s, maxSearchLength)
		}
		for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
			if !hostnameLabel.MatchString(label) && !(label == "_" || strings.HasPrefix(label, "_")) {
				return nil, fmt.Errorf("DNS search domain %q: not a domain name", s)
			}
		}
	}
	names := map[string]bool{}
	for i, in := range req.GetInterfaces() {
		ifc, err := iface(i, in, names)
		if err != nil {
			return nil, err
		}
		n.Interfaces = append(n.Interfaces, ifc)
	}
	for i, r := range req.GetRoutes() {
		rt, err := route(i, r)
		if err != nil {
			return nil, err
		}
		n.Routes = append(n.Routes, rt)
	}
	return n, nil
}

func networkBounds(req *agentapi.CreateSandboxRequest) error {
	counts := []struct {
		n, limit int
		what     string
	}{
		{len(req.GetSysctls()), maxSysctls, "sysctls"},
		{len(req.GetDnsServers()), maxDNSServers, "DNS servers"},
		{len(req.GetDnsSearches()), maxDNSSearches, "DNS search domains"},
		{len(req.GetInterfaces()), maxInterfaces, "interfaces"},
		{len(req.GetRoutes()), maxRoutes, "routes"},
	}
	for _, c := range counts {
		if c.n > c.limit {
			return fmt.Errorf("%d %s, limit is %d", c.n, c.what, c.limit)
		}
	}
	for _, in := range req.GetInterfaces() {
		if len(in.GetAddresses()) > maxAddresses {
			return fmt.Errorf("interface %s: %d addresses, limit is %d", Truncate(in.GetName()), len(in.GetAddresses()), maxAddresses)
		}
	}
	strs := append(append([]string{}, req.GetDnsServers()...), req.GetDnsSearches()...)
	for _, in := range req.GetInterfaces() {
		strs = append(append(strs, in.GetName(), in.GetMac()), in.GetAddresses()...)
	}
	for _, r := range req.GetRoutes() {
		strs = append(strs, r.GetDestination(), r.GetGateway(), r.GetDevice())
	}
	for _, s := range strs {
		if len(s) > maxShortString {
			return fmt.Errorf("a network field is %d bytes, limit %d", len(s), maxShortString)
		}
	}
	return nil
}

func iface(i int, in *agentapi.Interface, names map[string]bool) (Interface, error) {
	if !ifaceName.MatchString(in.GetName()) {
		return Interface{}, fmt.Errorf("interface %d: name %q: want 1 to 15 letters, digits, '_', '.' or '-'", i+1, in.GetName())
	}
	if names[in.GetName()] {
		return Interface{}, fmt.Errorf("interface %s: listed twice", in.GetName())
	}
	names[in.GetName()] = true
	ifc := Interface{Name: in.GetName(), MTU: int(in.GetMtu())}
	if in.GetMac() != "" {
		mac, err := net.ParseMAC(in.GetMac())
		if err != nil || len(mac) != 6 {
			return Interface{}, fmt.Errorf("interface %s: MAC %q: want six hex octets", in.GetName(), in.GetMac())
		}
		ifc.MAC = mac
	}
	if in.GetMtu() != 0 && (in.GetMtu() < minMTU || in.GetMtu() > maxMTU) {
		return Interface{}, fmt.Errorf("interface %s: MTU %d: want %d to %d", in.GetName(), in.GetMtu(), minMTU, maxMTU)
	}
	for _, a := range in.GetAddresses() {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return Interface{}, fmt.Errorf("interface %s: address %q: want CIDR like 10.0.2.15/24", in.GetName(), a)
		}
		ifc.Addresses = append(ifc.Addresses, p)
	}
	return ifc, nil
}

func route(i int, r *agentapi.Route) (Route, error) {
	var rt Route
	if r.GetDestination() != "default" {
		p, err := netip.ParsePrefix(r.GetDestination())
		if err != nil {
			return Route{}, fmt.Errorf("route %d: destination %q: want CIDR or \"default\"", i+1, r.GetDestination())
		}
		rt.Destination = p.Masked()
	}
	if r.GetGateway() != "" {
		gw, err := netip.ParseAddr(r.GetGateway())
		if err != nil {
			return Route{}, fmt.Errorf("route %d: gateway %q: want an IP address", i+1, r.GetGateway())
		}
		if rt.Destination.IsValid() && gw.Is4() != rt.Destination.Addr().Is4() {
			return Route{}, fmt.Errorf("route %d: gateway %s and destination %s are different IP families", i+1, r.GetGateway(), r.GetDestination())
		}
		rt.Gateway = gw
	}
	if r.GetDevice() != "" && !ifaceName.MatchString(r.GetDevice()) {
		return Route{}, fmt.Errorf("route %d: device %q is not an interface name", i+1, r.GetDevice())
	}
	if r.GetDevice() == "" && !rt.Gateway.IsValid() {
		return Route{}, fmt.Errorf("route %d: needs a gateway or a device", i+1)
	}
	if !rt.Destination.IsValid() && !rt.Gateway.IsValid() {
		return Route{}, fmt.Errorf("route %d: a default route needs a gateway", i+1)
	}
	rt.Device = r.GetDevice()
	return rt, nil
}

// Pull bounds PullImage's fields; the reference itself is parsed by the
// puller.
func Pull(req *agentapi.PullImageRequest) error {
	if req.GetImage() == "" || len(req.GetImage()) > maxImageRef {
		return Invalid("image reference is %d bytes, want 1-%d", len(req.GetImage()), maxImageRef)
	}
	if len(req.GetPlatform()) > maxPlatform {
		return Invalid("platform is %d bytes, limit %d", len(req.GetPlatform()), maxPlatform)
	}
	reg := req.GetRegistry()
	if len(reg.GetInsecureRegistries()) > maxListEntries || len(reg.GetMirrors()) > maxListEntries {
		return Invalid("registry options have more than %d entries", maxListEntries)
	}
	for _, s := range reg.GetInsecureRegistries() {
		if len(s) > maxShortString {
			return Invalid("insecure registry is %d bytes, limit %d", len(s), maxShortString)
		}
	}
	for k, v := range reg.GetMirrors() {
		if len(k) > maxShortString || len(v) > maxShortString {
			return Invalid("registry mirror %q is longer than %d bytes", Truncate(k), maxShortString)
		}
	}
	return nil
}

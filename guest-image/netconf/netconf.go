// Package netconf applies the pod's network configuration inside the
// guest: hostname, DNS, interfaces (found by MAC) and routes. Every field
// comes from the untrusted host and is validated before anything changes.
package netconf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/agentapi"
)

// Limits on a request; generous for one pod, small enough to bound work.
const (
	maxInterfaces   = 16
	maxAddresses    = 16
	maxRoutes       = 64
	maxDNSServers   = 3 // resolv.conf readers (glibc, musl) use 3
	maxDNSSearches  = 6
	maxSearchLength = 253
	minMTU, maxMTU  = 68, 65535
	maxSysctls      = 64
	maxSysctlValue  = 256
)

// etcDir is where hostname and resolv.conf go; tests point it elsewhere.
var etcDir = "/etc"

// procSysDir is where sysctls are written; tests point it elsewhere.
var procSysDir = "/proc/sys"

var (
	hostnameLabel = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	ifaceName     = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)
	// A network sysctl: net. then dot-separated names (interface names may
	// hold - and _); never a path.
	netSysctl = regexp.MustCompile(`^net(\.[a-zA-Z0-9_-]{1,64}){1,8}$`)
)

// Apply validates req's network fields, then sets the hostname, writes
// resolv.conf, configures the interfaces and adds the routes.
func Apply(ctx context.Context, req *agentapi.CreateSandboxRequest) error {
	cfg, err := validate(req)
	if err != nil {
		return err
	}
	if cfg.hostname != "" {
		if err := unix.Sethostname([]byte(cfg.hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
		if err := os.WriteFile(filepath.Join(etcDir, "hostname"), []byte(cfg.hostname+"\n"), 0o644); err != nil {
			return fmt.Errorf("write hostname: %w", err)
		}
	}
	if len(req.DnsServers) > 0 || len(req.DnsSearches) > 0 {
		if err := os.WriteFile(filepath.Join(etcDir, "resolv.conf"), resolvConf(req), 0o644); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	for _, ifc := range cfg.interfaces {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := configure(ifc); err != nil {
			return fmt.Errorf("interface %s: %w", ifc.name, err)
		}
	}
	for i, r := range cfg.routes {
		if err := addRoute(r); err != nil {
			return fmt.Errorf("route %d (%s): %w", i+1, req.Routes[i].Destination, err)
		}
	}
	// After the interfaces: per-interface sysctls name them.
	for _, sc := range cfg.sysctls {
		path := filepath.Join(procSysDir, strings.ReplaceAll(sc.key, ".", "/"))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return fmt.Errorf("sysctl %s: %w (not a sysctl of this guest kernel?)", sc.key, err)
		}
		_, err = f.WriteString(sc.value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("sysctl %s=%q: %w", sc.key, sc.value, err)
		}
	}
	return nil
}

type iface struct {
	name  string
	mac   net.HardwareAddr
	addrs []netip.Prefix
	mtu   int
}

type route struct {
	dst    netip.Prefix // invalid = default
	gw     netip.Addr   // invalid = link route
	device string
}

type config struct {
	hostname   string
	interfaces []iface
	routes     []route
	sysctls    []sysctl // sorted by key
}

type sysctl struct{ key, value string }

func validate(req *agentapi.CreateSandboxRequest) (*config, error) {
	cfg := &config{hostname: req.Hostname}
	if len(req.Sysctls) > maxSysctls {
		return nil, fmt.Errorf("%d sysctls, limit is %d", len(req.Sysctls), maxSysctls)
	}
	for k, v := range req.Sysctls {
		if !netSysctl.MatchString(k) {
			return nil, fmt.Errorf("sysctl %q: only network sysctls (net.*) are set for the pod", truncated(k))
		}
		if len(v) > maxSysctlValue || strings.ContainsAny(v, "\n\x00") {
			return nil, fmt.Errorf("sysctl %s: value of %d bytes: want one line of at most %d", k, len(v), maxSysctlValue)
		}
		cfg.sysctls = append(cfg.sysctls, sysctl{k, v})
	}
	slices.SortFunc(cfg.sysctls, func(a, b sysctl) int { return strings.Compare(a.key, b.key) })
	if h := req.Hostname; h != "" {
		if len(h) > 64 {
			return nil, fmt.Errorf("hostname is %d bytes, limit is 64", len(h))
		}
		for _, label := range strings.Split(h, ".") {
			if !hostnameLabel.MatchString(label) {
				return nil, fmt.Errorf("hostname %q: want letters, digits and inner hyphens in dot-separated labels", h)
			}
		}
	}
	if len(req.DnsServers) > maxDNSServers {
		return nil, fmt.Errorf("%d DNS servers, limit is %d", len(req.DnsServers), maxDNSServers)
	}
	for _, s := range req.DnsServers {
		if _, err := netip.ParseAddr(s); err != nil {
			return nil, fmt.Errorf("DNS server %q: want an IP address", s)
		}
	}
	if len(req.DnsSearches) > maxDNSSearches {
		return nil, fmt.Errorf("%d DNS search domains, limit is %d", len(req.DnsSearches), maxDNSSearches)
	}
	for _, s := range req.DnsSearches {
		if len(s) == 0 || len(s) > maxSearchLength {
			return nil, fmt.Errorf("DNS search domain %q: want 1 to %d bytes", s, maxSearchLength)
		}
		for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
			if !hostnameLabel.MatchString(label) && !(label == "_" || strings.HasPrefix(label, "_")) {
				return nil, fmt.Errorf("DNS search domain %q: not a domain name", s)
			}
		}
	}

	if len(req.Interfaces) > maxInterfaces {
		return nil, fmt.Errorf("%d interfaces, limit is %d", len(req.Interfaces), maxInterfaces)
	}
	names := map[string]bool{}
	for i, in := range req.Interfaces {
		if !ifaceName.MatchString(in.Name) {
			return nil, fmt.Errorf("interface %d: name %q: want 1 to 15 letters, digits, '_', '.' or '-'", i+1, in.Name)
		}
		if names[in.Name] {
			return nil, fmt.Errorf("interface %s: listed twice", in.Name)
		}
		names[in.Name] = true
		ifc := iface{name: in.Name, mtu: int(in.Mtu)}
		if in.Mac != "" {
			mac, err := net.ParseMAC(in.Mac)
			if err != nil || len(mac) != 6 {
				return nil, fmt.Errorf("interface %s: MAC %q: want six hex octets", in.Name, in.Mac)
			}
			ifc.mac = mac
		}
		if in.Mtu != 0 && (in.Mtu < minMTU || in.Mtu > maxMTU) {
			return nil, fmt.Errorf("interface %s: MTU %d: want %d to %d", in.Name, in.Mtu, minMTU, maxMTU)
		}
		if len(in.Addresses) > maxAddresses {
			return nil, fmt.Errorf("interface %s: %d addresses, limit is %d", in.Name, len(in.Addresses), maxAddresses)
		}
		for _, a := range in.Addresses {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("interface %s: address %q: want CIDR like 10.0.2.15/24", in.Name, a)
			}
			ifc.addrs = append(ifc.addrs, p)
		}
		cfg.interfaces = append(cfg.interfaces, ifc)
	}

	if len(req.Routes) > maxRoutes {
		return nil, fmt.Errorf("%d routes, limit is %d", len(req.Routes), maxRoutes)
	}
	for i, r := range req.Routes {
		var rt route
		if r.Destination != "default" {
			p, err := netip.ParsePrefix(r.Destination)
			if err != nil {
				return nil, fmt.Errorf("route %d: destination %q: want CIDR or \"default\"", i+1, r.Destination)
			}
			rt.dst = p.Masked()
		}
		if r.Gateway != "" {
			gw, err := netip.ParseAddr(r.Gateway)
			if err != nil {
				return nil, fmt.Errorf("route %d: gateway %q: want an IP address", i+1, r.Gateway)
			}
			if rt.dst.IsValid() && gw.Is4() != rt.dst.Addr().Is4() {
				return nil, fmt.Errorf("route %d: gateway %s and destination %s are different IP families", i+1, r.Gateway, r.Destination)
			}
			rt.gw = gw
		}
		if r.Device != "" && !ifaceName.MatchString(r.Device) {
			return nil, fmt.Errorf("route %d: device %q is not an interface name", i+1, r.Device)
		}
		if r.Device == "" && !rt.gw.IsValid() {
			return nil, fmt.Errorf("route %d: needs a gateway or a device", i+1)
		}
		if !rt.dst.IsValid() && !rt.gw.IsValid() {
			return nil, fmt.Errorf("route %d: a default route needs a gateway", i+1)
		}
		rt.device = r.Device
		cfg.routes = append(cfg.routes, rt)
	}
	return cfg, nil
}

func resolvConf(req *agentapi.CreateSandboxRequest) []byte {
	var b strings.Builder
	for _, s := range req.DnsServers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(req.DnsSearches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(req.DnsSearches, " "))
	}
	return []byte(b.String())
}

// findLink finds the guest NIC by MAC (names depend on probe order, MACs
// are what the host assigned), else by name.
func findLink(ifc iface) (netlink.Link, error) {
	if ifc.mac == nil {
		return netlink.LinkByName(ifc.name)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == ifc.mac.String() {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no interface has MAC %s", ifc.mac)
}

func configure(ifc iface) error {
	link, err := findLink(ifc)
	if err != nil {
		return err
	}
	if link.Attrs().Name != ifc.name {
		// Renaming needs the link down.
		if err := netlink.LinkSetDown(link); err != nil {
			return fmt.Errorf("set down to rename: %w", err)
		}
		if err := netlink.LinkSetName(link, ifc.name); err != nil {
			return fmt.Errorf("rename %s: %w", link.Attrs().Name, err)
		}
	}
	if ifc.mtu != 0 {
		if err := netlink.LinkSetMTU(link, ifc.mtu); err != nil {
			return fmt.Errorf("MTU %d: %w", ifc.mtu, err)
		}
	}
	for _, p := range ifc.addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("address %s: %w", p, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return nil
}

func addRoute(r route) error {
	nr := &netlink.Route{}
	if r.device != "" {
		link, err := netlink.LinkByName(r.device)
		if err != nil {
			return fmt.Errorf("device %s: %w", r.device, err)
		}
		nr.LinkIndex = link.Attrs().Index
	}
	if r.gw.IsValid() {
		nr.Gw = r.gw.AsSlice()
	}
	switch {
	case r.dst.IsValid():
		nr.Dst = &net.IPNet{IP: r.dst.Addr().AsSlice(), Mask: net.CIDRMask(r.dst.Bits(), r.dst.Addr().BitLen())}
		if !r.gw.IsValid() {
			nr.Scope = netlink.SCOPE_LINK
		}
	case r.gw.Is4():
		nr.Family = netlink.FAMILY_V4
	default:
		nr.Family = netlink.FAMILY_V6
	}
	if err := netlink.RouteReplace(nr); err != nil {
		if errors.Is(err, unix.ENETUNREACH) {
			return fmt.Errorf("gateway %s is not on a configured subnet: %w", r.gw, err)
		}
		return err
	}
	return nil
}

// truncated bounds an untrusted string quoted in an error.
func truncated(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Package netconf applies the pod's network configuration inside the
// guest: hostname, DNS, interfaces (found by MAC), routes and sysctls, as
// guest-image/hostinput validated them from the untrusted host's request.
package netconf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/guest-image/hostinput"
)

// etcDir is where hostname and resolv.conf go; tests point it elsewhere.
var etcDir = "/etc"

// procSysDir is where sysctls are written; tests point it elsewhere.
var procSysDir = "/proc/sys"

// Apply sets the hostname, writes resolv.conf, configures the interfaces,
// adds the routes and sets the sysctls of a network hostinput validated.
func Apply(ctx context.Context, n *hostinput.Network) error {
	if n.Hostname != "" {
		if err := unix.Sethostname([]byte(n.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
		if err := os.WriteFile(filepath.Join(etcDir, "hostname"), []byte(n.Hostname+"\n"), 0o644); err != nil {
			return fmt.Errorf("write hostname: %w", err)
		}
	}
	if len(n.DNSServers) > 0 || len(n.DNSSearches) > 0 {
		if err := os.WriteFile(filepath.Join(etcDir, "resolv.conf"), resolvConf(n), 0o644); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	for _, ifc := range n.Interfaces {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := configure(ifc); err != nil {
			return fmt.Errorf("interface %s: %w", ifc.Name, err)
		}
	}
	for i, r := range n.Routes {
		if err := addRoute(r); err != nil {
			return fmt.Errorf("route %d (%s): %w", i+1, destination(r), err)
		}
	}
	// After the interfaces: per-interface sysctls name them.
	for _, sc := range n.Sysctls {
		path := filepath.Join(procSysDir, strings.ReplaceAll(sc.Key, ".", "/"))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return fmt.Errorf("sysctl %s: %w (not a sysctl of this guest kernel?)", sc.Key, err)
		}
		_, err = f.WriteString(sc.Value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("sysctl %s=%q: %w", sc.Key, sc.Value, err)
		}
	}
	return nil
}

// destination names a route in errors as the host did: "default" or a CIDR.
func destination(r hostinput.Route) string {
	if !r.Destination.IsValid() {
		return "default"
	}
	return r.Destination.String()
}

func resolvConf(n *hostinput.Network) []byte {
	var b strings.Builder
	for _, s := range n.DNSServers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(n.DNSSearches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(n.DNSSearches, " "))
	}
	return []byte(b.String())
}

// findLink finds the guest NIC by MAC (names depend on probe order, MACs
// are what the host assigned), else by name.
func findLink(ifc hostinput.Interface) (netlink.Link, error) {
	if ifc.MAC == nil {
		return netlink.LinkByName(ifc.Name)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == ifc.MAC.String() {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no interface has MAC %s", ifc.MAC)
}

func configure(ifc hostinput.Interface) error {
	link, err := findLink(ifc)
	if err != nil {
		return err
	}
	if link.Attrs().Name != ifc.Name {
		// Renaming needs the link down.
		if err := netlink.LinkSetDown(link); err != nil {
			return fmt.Errorf("set down to rename: %w", err)
		}
		if err := netlink.LinkSetName(link, ifc.Name); err != nil {
			return fmt.Errorf("rename %s: %w", link.Attrs().Name, err)
		}
	}
	if ifc.MTU != 0 {
		if err := netlink.LinkSetMTU(link, ifc.MTU); err != nil {
			return fmt.Errorf("MTU %d: %w", ifc.MTU, err)
		}
	}
	for _, p := range ifc.Addresses {
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

func addRoute(r hostinput.Route) error {
	nr := &netlink.Route{}
	if r.Device != "" {
		link, err := netlink.LinkByName(r.Device)
		if err != nil {
			return fmt.Errorf("device %s: %w", r.Device, err)
		}
		nr.LinkIndex = link.Attrs().Index
	}
	if r.Gateway.IsValid() {
		nr.Gw = r.Gateway.AsSlice()
	}
	switch {
	case r.Destination.IsValid():
		nr.Dst = &net.IPNet{IP: r.Destination.Addr().AsSlice(), Mask: net.CIDRMask(r.Destination.Bits(), r.Destination.Addr().BitLen())}
		if !r.Gateway.IsValid() {
			nr.Scope = netlink.SCOPE_LINK
		}
	case r.Gateway.Is4():
		nr.Family = netlink.FAMILY_V4
	default:
		nr.Family = netlink.FAMILY_V6
	}
	if err := netlink.RouteReplace(nr); err != nil {
		if errors.Is(err, unix.ENETUNREACH) {
			return fmt.Errorf("gateway %s is not on a configured subnet: %w", r.Gateway, err)
		}
		return err
	}
	return nil
}

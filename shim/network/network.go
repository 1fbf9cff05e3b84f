// Package network connects a pod VM to the pod network namespace that CNI
// prepared, and describes that network so the guest can be configured the
// same way.
//
// For each CNI interface (e.g. the veth end eth0) Attach creates a TAP
// (tap0_cloak, tap1_cloak, ...) in the same namespace and joins the two with
// tc ingress redirects (see tc.go). The guest NIC gets the interface's MAC,
// addresses, MTU and routes, so to the rest of the pod network the VM is the
// pod.
//
// Contract with the QEMU launcher: QEMU runs in the host namespace, so it
// cannot open the TAP by name. Pass each TAP.File to the QEMU process through
// exec.Cmd.ExtraFiles (entry i becomes fd 3+i in QEMU) and use
//
//	-netdev tap,id=net0,fd=3 -device virtio-net-pci,netdev=net0,mac=<TAP.MAC>
//
// The TAP has IFF_VNET_HDR set, which QEMU detects on the fd. The Pod keeps
// its copy of the fd open until Detach; that is harmless because QEMU holds
// its own duplicate.
package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// Limits match what the in-guest agent accepts (guest-image/netconf), so an
// oversize pod network fails here, on the host, with the interface named.
const (
	maxInterfaces = 16
	maxAddresses  = 16
	maxRoutes     = 64
)

// tapName is the name of the TAP for the i-th pod interface; tapPattern
// matches every name tapName can produce, which is how Cleanup recognises
// Cloak's TAPs.
func tapName(i int) string { return fmt.Sprintf("tap%d_cloak", i) }

var tapPattern = regexp.MustCompile(`^tap[0-9]+_cloak$`)

// TAP is one TAP device QEMU must attach to. File is owned by the Pod and
// closed by Detach; QEMU gets its own duplicate through ExtraFiles.
type TAP struct {
	Name      string           // e.g. "tap0_cloak"
	NetNS     string           // the pod network namespace the TAP is in
	Interface string           // the pod interface it mirrors, e.g. "eth0"
	MAC       net.HardwareAddr // give the guest NIC this MAC (the interface's)
	MTU       int
	File      *os.File // the TAP queue, for -netdev tap,fd=N
}

// Pod is the pod network as attached to the VM's TAPs.
type Pod struct {
	netnsPath string
	log       *slog.Logger
	taps      []TAP
	ifaces    []*agentapi.Interface
	routes    []*agentapi.Route

	mu     sync.Mutex
	ns     netns.NsHandle // held open so Detach works after CNI DEL removed the path
	handle *netlink.Handle
	closed bool
}

// Attach creates and joins a TAP for every configured interface in the
// network namespace at netnsPath (as CNI leaves it, e.g.
// /var/run/netns/cni-..., or /proc/PID/ns/net). Interfaces without a MAC or
// without a non-link-local address (loopback, tunl0, ...) are not attached.
// On error nothing is left behind.
func Attach(ctx context.Context, netnsPath string, log *slog.Logger) (*Pod, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns, err := openNetNS(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("attach pod network: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("attach pod network: netlink socket in %s: %w", netnsPath, err)
	}
	p := &Pod{netnsPath: netnsPath, log: log, ns: ns, handle: h}
	if err := p.attach(ctx); err != nil {
		if derr := p.Detach(ctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", derr))
		}
		return nil, fmt.Errorf("attach pod network %s: %w", netnsPath, err)
	}
	return p, nil
}

func (p *Pod) attach(ctx context.Context) error {
	links, err := podLinks(p.handle)
	if err != nil {
		return err
	}
	for i, l := range links {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := p.attachLink(i, l); err != nil {
			return fmt.Errorf("interface %s: %w", l.Attrs().Name, err)
		}
	}
	routes, err := podRoutes(p.handle, links)
	if err != nil {
		return err
	}
	p.routes = routes
	return nil
}

// podLinks returns the interfaces to attach, in index order.
func podLinks(h *netlink.Handle) ([]netlink.Link, error) {
	all, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var links []netlink.Link
	for _, l := range all {
		a := l.Attrs()
		if tapPattern.MatchString(a.Name) {
			return nil, fmt.Errorf("%s already exists: the namespace is attached to another VM, or a killed shim left it (network.Cleanup removes it)", a.Name)
		}
		if a.Flags&net.FlagLoopback != 0 || len(a.HardwareAddr) != 6 {
			continue
		}
		addrs, err := podAddrs(h, l)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", a.Name, err)
		}
		if len(addrs) == 0 {
			continue
		}
		links = append(links, l)
	}
	if len(links) == 0 {
		return nil, errors.New("no interface with an address to attach (did the CNI plugin run?)")
	}
	if len(links) > maxInterfaces {
		return nil, fmt.Errorf("%d interfaces, limit is %d", len(links), maxInterfaces)
	}
	return links, nil
}

// podAddrs returns the interface's addresses as CIDRs. Link-local IPv6
// addresses are left out: the guest kernel makes its own from the MAC.
func podAddrs(h *netlink.Handle, l netlink.Link) ([]string, error) {
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []string
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, a.IPNet.String())
	}
	if len(out) > maxAddresses {
		return nil, fmt.Errorf("%d addresses, limit is %d", len(out), maxAddresses)
	}
	return out, nil
}

func (p *Pod) attachLink(i int, l netlink.Link) error {
	a := l.Attrs()
	addrs, err := podAddrs(p.handle, l)
	if err != nil {
		return err
	}
	name := tapName(i)
	f, err := createTAP(p.ns, name)
	if err != nil {
		return fmt.Errorf("create TAP %s: %w", name, err)
	}
	tap := TAP{Name: name, NetNS: p.netnsPath, Interface: a.Name, MAC: a.HardwareAddr, MTU: a.MTU, File: f}
	p.taps = append(p.taps, tap)
	tl, err := p.handle.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find TAP %s: %w", name, err)
	}
	if err := p.handle.LinkSetMTU(tl, a.MTU); err != nil {
		return fmt.Errorf("set TAP %s MTU %d: %w", name, a.MTU, err)
	}
	if err := p.handle.LinkSetUp(tl); err != nil {
		return fmt.Errorf("set TAP %s up: %w", name, err)
	}
	if err := redirect(p.handle, a.Index, tl.Attrs().Index); err != nil {
		return fmt.Errorf("redirect to %s: %w", name, err)
	}
	if err := redirect(p.handle, tl.Attrs().Index, a.Index); err != nil {
		return fmt.Errorf("redirect from %s: %w", name, err)
	}
	p.ifaces = append(p.ifaces, &agentapi.Interface{
		Name:      a.Name,
		Mac:       a.HardwareAddr.String(),
		Addresses: addrs,
		Mtu:       uint32(a.MTU),
	})
	p.log.Info("attached pod interface", "interface", a.Name, "tap", name, "mac", a.HardwareAddr.String(), "mtu", a.MTU, "addresses", addrs)
	return nil
}

// Interfaces describes the guest NICs: each named and addressed like the pod
// interface it mirrors, with its MAC so ARP replies from the guest match
// what the pod network learned.
func (p *Pod) Interfaces() []*agentapi.Interface { return p.ifaces }

// Routes are the namespace's main-table routes through the attached
// interfaces, link routes first so that gateways are reachable when the
// guest adds the routes through them.
func (p *Pod) Routes() []*agentapi.Route { return p.routes }

// TAPs are the TAP devices QEMU must attach to, in guest interface order.
func (p *Pod) TAPs() []TAP { return append([]TAP(nil), p.taps...) }

// Detach removes the TAPs and their redirects and closes the fds and
// namespace handles. It is idempotent; after an error the namespace may
// hold leftovers that Cleanup removes.
func (p *Pod) Detach(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	var errs []error
	for _, t := range p.taps {
		if err := removeTAP(p.handle, t.Name); err != nil {
			errs = append(errs, err)
		}
	}
	p.release()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach pod network %s: %w", p.netnsPath, err)
	}
	p.log.Debug("detached pod network", "netns", p.netnsPath)
	return nil
}

// release closes what the Pod holds open without touching the namespace,
// as a killed shim would.
func (p *Pod) release() {
	for _, t := range p.taps {
		t.File.Close()
	}
	p.handle.Close()
	p.ns.Close()
	p.closed = true
}

// removeTAP removes the redirects to the TAP name, then the TAP (and with
// it its own qdisc and filter). By name, not index: Attach refuses a
// namespace that already has a TAP of that name, so the name is Cloak's.
func removeTAP(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		if isGone(err) {
			return nil
		}
		return fmt.Errorf("TAP %s: find: %w", name, err)
	}
	if err := unredirect(h, l.Attrs().Index); err != nil {
		return fmt.Errorf("TAP %s: remove redirects: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil && !isGone(err) {
		return fmt.Errorf("TAP %s: delete: %w", name, err)
	}
	return nil
}

// Cleanup removes every Cloak TAP and its redirects from the network
// namespace at netnsPath: what a shim killed before Detach leaves behind.
// A namespace without any is not an error.
func Cleanup(netnsPath string) error {
	ns, err := openNetNS(netnsPath)
	if err != nil {
		return fmt.Errorf("clean up pod network: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("clean up pod network: netlink socket in %s: %w", netnsPath, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("clean up pod network %s: list interfaces: %w", netnsPath, err)
	}
	var errs []error
	for _, l := range links {
		if _, ok := l.(*netlink.Tuntap); !ok || !tapPattern.MatchString(l.Attrs().Name) {
			continue
		}
		if err := removeTAP(h, l.Attrs().Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up pod network %s: %w", netnsPath, err)
	}
	return nil
}

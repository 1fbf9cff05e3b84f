package network

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The pod's interface and its TAP are joined with tc, as Kata's "tcfilter"
// model does: each gets an ingress qdisc whose one match-all u32 filter
// redirects every frame to the other device's egress. Unlike a bridge or
// macvtap this keeps the CNI-managed interface untouched (same MAC, same
// addresses) and works for any L2 interface CNI creates.

var ingressHandle = netlink.MakeHandle(0xffff, 0)

// redirectPriority marks Cloak's filters; a low priority number runs first
// so a filter someone else left on the device cannot shadow the redirect.
const redirectPriority = 1

func ingressQdisc(link int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link,
		Handle:    ingressHandle,
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

// redirect sends every frame arriving on from out of to.
func redirect(h *netlink.Handle, from, to int) error {
	if err := h.QdiscAdd(ingressQdisc(from)); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add ingress qdisc: the interface already has one (another tool shapes its traffic?): %w", err)
		}
		return fmt.Errorf("add ingress qdisc: %w", err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    ingressHandle,
			Priority:  redirectPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		// A nil Sel is netlink's match-all selector.
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to,
		}},
	}
	if err := h.FilterAdd(filter); err != nil {
		return fmt.Errorf("add redirect filter: %w", err)
	}
	return nil
}

// unredirect removes the ingress redirects to the device with index tap
// from every other device, and the ingress qdiscs that leaves empty. It
// scans all links so that it needs nothing but the TAP's index, which is all
// Cleanup knows. The TAP's own qdisc and filter go away with the TAP.
func unredirect(h *netlink.Handle, tap int) error {
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	var errs []error
	for _, l := range links {
		if l.Attrs().Index == tap {
			continue
		}
		if err := unredirectLink(h, l, tap); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

func unredirectLink(h *netlink.Handle, l netlink.Link, tap int) error {
	filters, err := h.FilterList(l, ingressHandle)
	if err != nil {
		if isGone(err) {
			return nil
		}
		return fmt.Errorf("list ingress filters: %w", err)
	}
	deleted := false
	for _, f := range filters {
		if !redirectsTo(f, tap) {
			continue
		}
		// Without a handle the kernel deletes the whole u32 classifier at
		// this priority; deleting only the listed node would leave its
		// empty hash table behind.
		attrs := *f.Attrs()
		attrs.Handle = 0
		if err := h.FilterDel(&netlink.U32{FilterAttrs: attrs}); err != nil && !isGone(err) {
			return fmt.Errorf("delete redirect filter: %w", err)
		}
		deleted = true
	}
	if !deleted {
		return nil
	}
	if rest, err := h.FilterList(l, ingressHandle); err != nil || len(rest) > 0 {
		// Someone else's filters share the qdisc: keep it.
		return nil
	}
	if err := h.QdiscDel(ingressQdisc(l.Attrs().Index)); err != nil && !isGone(err) {
		return fmt.Errorf("delete ingress qdisc: %w", err)
	}
	return nil
}

// redirectsTo reports whether f is a u32 filter that redirects to the
// device with index to.
func redirectsTo(f netlink.Filter, to int) bool {
	u, ok := f.(*netlink.U32)
	if !ok {
		return false
	}
	for _, a := range u.Actions {
		if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == to {
			return true
		}
	}
	return false
}

// isGone reports errors that mean the object is already removed, which
// Detach and Cleanup treat as done.
func isGone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}

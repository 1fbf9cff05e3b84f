package network

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// podRoutes lists the main-table routes through links for the guest.
// Routes the kernel adds by itself when an address is assigned
// (proto kernel, e.g. 10.88.0.0/16 dev eth0, fe80::/64) are left out: the
// guest kernel adds them too, and adding them again would fail.
func podRoutes(h *netlink.Handle, links []netlink.Link) ([]*agentapi.Route, error) {
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	all, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var routes []*agentapi.Route
	for _, r := range all {
		dev, ok := names[r.LinkIndex]
		if !ok || r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue
		}
		rt := &agentapi.Route{Destination: "default", Device: dev}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 {
				rt.Destination = r.Dst.String()
			}
		}
		if r.Gw != nil {
			rt.Gateway = r.Gw.String()
		}
		routes = append(routes, rt)
	}
	if len(routes) > maxRoutes {
		return nil, fmt.Errorf("%d routes, limit is %d", len(routes), maxRoutes)
	}
	slices.SortStableFunc(routes, func(a, b *agentapi.Route) int {
		return cmp.Compare(routeOrder(a), routeOrder(b))
	})
	return routes, nil
}

// routeOrder: link routes, then gateway routes, then default routes.
func routeOrder(r *agentapi.Route) int {
	switch {
	case r.Gateway == "":
		return 0
	case r.Destination != "default":
		return 1
	default:
		return 2
	}
}

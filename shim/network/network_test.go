package network

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/cloak-containers/cloak/api/agentapi"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and TAPs")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
}

// testNS is a named network namespace the test created and deletes.
type testNS struct {
	path string
	ns   netns.NsHandle
	h    *netlink.Handle
}

func newNS(t *testing.T) *testNS {
	t.Helper()
	name := "cloaktest-" + rand.Text()[:10]
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace; the
		// thread stays locked (and is discarded) if it cannot get back.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	must(t, h.LinkSetUp(lo))
	return &testNS{path: filepath.Join("/var/run/netns", name), ns: ns, h: h}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addAddr(t *testing.T, h *netlink.Handle, l netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	must(t, err)
	a.Flags = unix.IFA_F_NODAD // no DAD delay: the address is usable at once
	must(t, h.AddrAdd(l, a))
}

func addRoute(t *testing.T, h *netlink.Handle, l netlink.Link, dst, gw string) {
	t.Helper()
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}
	if dst != "" {
		_, n, err := net.ParseCIDR(dst)
		must(t, err)
		r.Dst = n
	}
	must(t, h.RouteAdd(r))
}

// podNet is a pod namespace set up like CNI's bridge plugin leaves it:
// eth0 (MTU 1450) with 10.88.0.5/16 and fd00:88::5/64, default route via
// 10.88.0.1, one more gateway route, a link route, and an address-less veth pair that
// must not be attached. The veth peer (10.88.0.1) is in a second namespace, standing
// in for the host bridge.
type podNet struct {
	pod, peer   *testNS
	eth0, vpeer netlink.Link
}

func newPodNet(t *testing.T) *podNet {
	t.Helper()
	pn := &podNet{pod: newNS(t), peer: newNS(t)}
	must(t, pn.pod.h.LinkAdd(&netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "eth0", MTU: 1450},
		PeerName:      "vpeer",
		PeerNamespace: netlink.NsFd(pn.peer.ns),
	}))
	// Address-less and so not attached (this kernel has no dummy links).
	must(t, pn.pod.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "spare0"}, PeerName: "spare1"}))
	var err error
	pn.eth0, err = pn.pod.h.LinkByName("eth0")
	must(t, err)
	pn.vpeer, err = pn.peer.h.LinkByName("vpeer")
	must(t, err)
	must(t, pn.peer.h.LinkSetMTU(pn.vpeer, 1450))
	addAddr(t, pn.pod.h, pn.eth0, "10.88.0.5/16")
	addAddr(t, pn.pod.h, pn.eth0, "fd00:88::5/64")
	addAddr(t, pn.peer.h, pn.vpeer, "10.88.0.1/16")
	must(t, pn.pod.h.LinkSetUp(pn.eth0))
	must(t, pn.peer.h.LinkSetUp(pn.vpeer))
	addRoute(t, pn.pod.h, pn.eth0, "", "10.88.0.1")
	addRoute(t, pn.pod.h, pn.eth0, "192.168.100.0/24", "10.88.0.1")
	addRoute(t, pn.pod.h, pn.eth0, "172.16.0.0/24", "") // a link route, added last
	return pn
}

// tcState is what Cloak may leave on a namespace's links: ingress qdiscs,
// mirred redirects (link -> target link) and TAPs.
type tcState struct {
	ingress   []string
	redirects []string
	taps      []string
}

func stateOf(t *testing.T, h *netlink.Handle) tcState {
	t.Helper()
	links, err := h.LinkList()
	must(t, err)
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var s tcState
	for _, l := range links {
		name := l.Attrs().Name
		if tapPattern.MatchString(name) {
			s.taps = append(s.taps, name)
		}
		qs, err := h.QdiscList(l)
		must(t, err)
		for _, q := range qs {
			if _, ok := q.(*netlink.Ingress); ok {
				s.ingress = append(s.ingress, name)
			}
		}
		fs, err := h.FilterList(l, ingressHandle)
		if err != nil {
			continue // no ingress qdisc
		}
		for _, f := range fs {
			u, ok := f.(*netlink.U32)
			if !ok {
				continue
			}
			for _, a := range u.Actions {
				if m, ok := a.(*netlink.MirredAction); ok {
					s.redirects = append(s.redirects, name+"->"+names[m.Ifindex])
				}
			}
		}
	}
	return s
}

func TestAttachDetach(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	pn := newPodNet(t)

	p, err := Attach(ctx, pn.pod.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Detach(ctx) })

	want := tcState{
		ingress:   []string{"eth0", "tap0_cloak"},
		redirects: []string{"eth0->tap0_cloak", "tap0_cloak->eth0"},
		taps:      []string{"tap0_cloak"},
	}
	if diff := cmp.Diff(want, stateOf(t, pn.pod.h), cmp.AllowUnexported(tcState{})); diff != "" {
		t.Errorf("after Attach (-want +got):\n%s", diff)
	}
	tap, err := pn.pod.h.LinkByName("tap0_cloak")
	must(t, err)
	if tap.Attrs().MTU != 1450 || tap.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap0_cloak: MTU %d, flags %v; want MTU 1450, up", tap.Attrs().MTU, tap.Attrs().Flags)
	}
	if tt, ok := tap.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP || tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("tap0_cloak is %#v, want a single-queue TAP", tap)
	}

	mac := pn.eth0.Attrs().HardwareAddr
	wantIfaces := []*agentapi.Interface{{
		Name: "eth0", Mac: mac.String(), Addresses: []string{"10.88.0.5/16", "fd00:88::5/64"}, Mtu: 1450,
	}}
	if diff := cmp.Diff(wantIfaces, p.Interfaces(), protocmp.Transform()); diff != "" {
		t.Errorf("Interfaces (-want +got):\n%s", diff)
	}
	wantRoutes := []*agentapi.Route{
		{Destination: "172.16.0.0/24", Device: "eth0"},
		{Destination: "192.168.100.0/24", Gateway: "10.88.0.1", Device: "eth0"},
		{Destination: "default", Gateway: "10.88.0.1", Device: "eth0"},
	}
	if diff := cmp.Diff(wantRoutes, p.Routes(), protocmp.Transform()); diff != "" {
		t.Errorf("Routes (-want +got):\n%s", diff)
	}
	taps := p.TAPs()
	if len(taps) != 1 || taps[0].Name != "tap0_cloak" || taps[0].Interface != "eth0" ||
		taps[0].NetNS != pn.pod.path || taps[0].MAC.String() != mac.String() || taps[0].MTU != 1450 {
		t.Fatalf("TAPs = %+v", taps)
	}

	t.Run("peer to TAP", func(t *testing.T) { peerToTAP(t, pn, taps[0].File) })
	t.Run("TAP to peer", func(t *testing.T) { tapToPeer(t, pn, taps[0].File) })

	if err := p.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tcState{}, stateOf(t, pn.pod.h), cmp.AllowUnexported(tcState{})); diff != "" {
		t.Errorf("after Detach (-want +got):\n%s", diff)
	}
	if err := p.Detach(ctx); err != nil {
		t.Errorf("second Detach: %v", err)
	}
}

// vnetHdrLen is the size of struct virtio_net_hdr that prefixes every frame
// on a TAP with IFF_VNET_HDR (until TUNSETVNETHDRSZ changes it, as QEMU does).
const vnetHdrLen = 10

// peerToTAP sends a UDP datagram from the peer namespace to the pod address
// and expects the frame on the TAP: it crossed the veth and the redirect.
func peerToTAP(t *testing.T, pn *podNet, tap *os.File) {
	mac := pn.eth0.Attrs().HardwareAddr
	// A permanent neighbour entry spares ARP (the pod's stack no longer
	// sees eth0's traffic to answer it).
	must(t, pn.peer.h.NeighAdd(&netlink.Neigh{
		LinkIndex: pn.vpeer.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: net.ParseIP("10.88.0.5"), HardwareAddr: mac,
	}))
	marker := []byte("cloak peer->tap " + rand.Text())
	err := inNetNS(pn.peer.ns, func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP("10.88.0.5"), Port: 9999})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(marker)
		return err
	})
	must(t, err)

	must(t, tap.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 65536)
	for {
		n, err := tap.Read(buf)
		if err != nil {
			t.Fatalf("read TAP (want the datagram with %q): %v", marker, err)
		}
		frame := buf[vnetHdrLen:n]
		if !bytes.Contains(frame, marker) {
			continue // e.g. IPv6 router solicitations from the peer
		}
		if !bytes.Equal(frame[:6], mac) || binary.BigEndian.Uint16(frame[12:14]) != unix.ETH_P_IP {
			t.Errorf("frame %s: want an IPv4 frame to %s", hex.EncodeToString(frame[:14]), mac)
		}
		return
	}
}

// tapToPeer writes an Ethernet frame with a UDP datagram into the TAP, as
// the guest would, and expects the peer namespace to receive it.
func tapToPeer(t *testing.T, pn *podNet, tap *os.File) {
	var conn *net.UDPConn
	must(t, inNetNS(pn.peer.ns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.88.0.1"), Port: 9998})
		return err
	}))
	defer conn.Close()

	payload := []byte("cloak tap->peer " + rand.Text())
	frame := make([]byte, vnetHdrLen, vnetHdrLen+14+20+8+len(payload))
	frame = append(frame, pn.vpeer.Attrs().HardwareAddr...)
	frame = append(frame, pn.eth0.Attrs().HardwareAddr...)
	frame = binary.BigEndian.AppendUint16(frame, unix.ETH_P_IP)
	ip := []byte{0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, unix.IPPROTO_UDP, 0, 0, 10, 88, 0, 5, 10, 88, 0, 1}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	frame = append(frame, ip...)
	frame = binary.BigEndian.AppendUint16(frame, 9999)
	frame = binary.BigEndian.AppendUint16(frame, 9998)
	frame = binary.BigEndian.AppendUint16(frame, uint16(8+len(payload)))
	frame = append(frame, 0, 0) // no UDP checksum (allowed over IPv4)
	frame = append(frame, payload...)
	if _, err := tap.Write(frame); err != nil {
		t.Fatalf("write TAP: %v", err)
	}

	must(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 2048)
	n, from, err := conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("peer did not receive the frame written to the TAP: %v", err)
	}
	if !bytes.Equal(buf[:n], payload) || from.String() != "10.88.0.5:9999" {
		t.Errorf("peer got %q from %s, want %q from 10.88.0.5:9999", buf[:n], from, payload)
	}
}

func ipChecksum(hdr []byte) uint16 {
	var sum uint32
	for i := 0; i < len(hdr); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(hdr[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestCleanupAfterCrash(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	pn := newPodNet(t)

	p, err := Attach(ctx, pn.pod.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(ctx, pn.pod.path, nil); err == nil || !strings.Contains(err.Error(), "network.Cleanup") {
		t.Errorf("second Attach: err = %v, want one that points at network.Cleanup", err)
	}
	p.release() // the shim dies: its fds close, nothing is removed
	if got := stateOf(t, pn.pod.h); len(got.taps) != 1 || len(got.redirects) != 2 {
		t.Fatalf("after the simulated crash the TAP and redirects should remain, got %+v", got)
	}

	if err := Cleanup(pn.pod.path); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tcState{}, stateOf(t, pn.pod.h), cmp.AllowUnexported(tcState{})); diff != "" {
		t.Errorf("after Cleanup (-want +got):\n%s", diff)
	}
	if err := Cleanup(pn.pod.path); err != nil {
		t.Errorf("Cleanup of a clean namespace: %v", err)
	}
	// The namespace is as CNI left it: a new VM can attach.
	p, err = Attach(ctx, pn.pod.path, nil)
	if err != nil {
		t.Fatalf("Attach after Cleanup: %v", err)
	}
	must(t, p.Detach(ctx))
}

func TestAttachRefuses(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(file, nil, 0o600))

	tests := []struct {
		name    string
		path    func(t *testing.T) string
		wantErr string
	}{
		{"empty path", func(*testing.T) string { return "" }, "empty"},
		{"relative path", func(*testing.T) string { return "var/run/netns/x" }, "not absolute"},
		{"missing", func(*testing.T) string { return "/var/run/netns/cloak-no-such-ns" }, "no such file"},
		{"plain file", func(*testing.T) string { return file }, "not a network namespace"},
		{"directory", func(t *testing.T) string { return t.TempDir() }, "not a network namespace"},
		{"mount namespace", func(*testing.T) string { return "/proc/self/ns/mnt" }, "not a network namespace"},
		{"host namespace", func(*testing.T) string { return "/proc/self/ns/net" }, "host network namespace"},
		{"only loopback", func(t *testing.T) string { return newNS(t).path }, "no interface"},
		{"too many interfaces", func(t *testing.T) string {
			n := newNS(t)
			for i := range maxInterfaces + 1 {
				name := fmt.Sprintf("v%d", i)
				must(t, n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}))
				l, err := n.h.LinkByName(name)
				must(t, err)
				addAddr(t, n.h, l, fmt.Sprintf("10.89.%d.1/24", i))
			}
			return n.path
		}, "limit is 16"},
		{"interface with an ingress qdisc", func(t *testing.T) string {
			pn := newPodNet(t)
			must(t, pn.pod.h.QdiscAdd(ingressQdisc(pn.eth0.Attrs().Index)))
			return pn.pod.path
		}, "interface eth0: redirect to tap0_cloak: add ingress qdisc: the interface already has one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path(t)
			p, err := Attach(ctx, path, nil)
			if err == nil {
				p.Detach(ctx)
				t.Fatalf("Attach(%q) succeeded, want error with %q", path, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Attach(%q) = %v, want error with %q", path, err, tt.wantErr)
			}
			if strings.HasPrefix(path, "/var/run/netns/cloaktest-") {
				if err := Cleanup(path); err != nil {
					t.Errorf("Cleanup: %v", err)
				}
				// Attach undid its work: no TAP left, a foreign qdisc kept.
				ns, err := netns.GetFromPath(path)
				must(t, err)
				defer ns.Close()
				h, err := netlink.NewHandleAt(ns)
				must(t, err)
				defer h.Close()
				if s := stateOf(t, h); len(s.taps) != 0 || len(s.redirects) != 0 {
					t.Errorf("failed Attach left %+v", s)
				}
			} else if err := Cleanup(path); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Cleanup(%q) = %v, want error with %q", path, err, tt.wantErr)
			}
		})
	}
}

package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// openNetNS opens the pod network namespace at path after checking that it
// is one: a wrong path (a mount namespace, a plain file, the host's own
// namespace) would otherwise have Attach redirect the host's traffic.
func openNetNS(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), errors.New("network namespace path is empty: the sandbox needs the netns CNI prepared")
	}
	if !filepath.IsAbs(path) {
		return netns.None(), fmt.Errorf("network namespace path %q is not absolute", path)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("open network namespace %s: %w", path, err)
	}
	ns := netns.NsHandle(fd)
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		ns.Close()
		return netns.None(), fmt.Errorf("%s is not a network namespace (want a path like /var/run/netns/cni-... or /proc/PID/ns/net)", path)
	}
	host, err := netns.Get()
	if err != nil {
		ns.Close()
		return netns.None(), fmt.Errorf("open the host network namespace: %w", err)
	}
	defer host.Close()
	if ns.Equal(host) {
		ns.Close()
		return netns.None(), fmt.Errorf("%s is the host network namespace: a pod VM needs its own (host-network pods are not supported)", path)
	}
	return ns, nil
}

// inNetNS runs fn on an OS thread that has entered ns. Hand-written because
// the one library that has it (containernetworking/plugins/pkg/ns) is not a
// dependency and this is a few lines: the thread is never returned to the Go
// scheduler in ns — if switching back fails it stays locked and exits with
// the goroutine.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter the pod network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave the pod network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// createTAP creates the TAP name in ns and returns its open queue fd for
// QEMU. The TAP is persistent so that it outlives a killed shim: Cleanup
// then finds it by name and removes it together with its filters.
func createTAP(ns netns.NsHandle, name string) (*os.File, error) {
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// One queue (no IFF_MULTI_QUEUE), no packet-info prefix, and
		// virtio-net headers so QEMU can pass checksum/GSO offloads through.
		Queues: 1,
		Flags:  netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		// Owner and Group stay 0: only root may attach to the TAP.
	}
	// The tun ioctls act on the calling thread's namespace, so LinkAdd
	// must run inside the pod's.
	if err := inNetNS(ns, func() error { return netlink.LinkAdd(tap) }); err != nil {
		return nil, err
	}
	return tap.Fds[0], nil
}

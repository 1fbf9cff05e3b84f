// Package guestinit does what PID 1 must do in the guest before the agent
// serves: mount the kernel filesystems and cgroups, load the image's kernel
// modules, make sure the random pool is seeded from sources the host does
// not control, bring up loopback, and create the /dev/virtio-ports links
// that udev would make elsewhere. PowerOff ends the VM.
package guestinit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// mount is one filesystem PID 1 mounts.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

const nodevExec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// baseMounts come first, in order; cgroups follow once /proc tells which
// cgroup version the kernel has.
var baseMounts = []mount{
	{"proc", "/proc", "proc", nodevExec, ""},
	{"sysfs", "/sys", "sysfs", nodevExec, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
	{"shm", "/dev/shm", "tmpfs", nodevExec, "mode=1777"},
	// /run holds pulled images and container state, in guest memory.
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// RunEtc is the writable directory the root disk's /etc links point into.
const RunEtc = "/run/etc"

// mounted records what Setup mounted, for PowerOff.
var mounted []string

// Setup prepares the guest as PID 1. It stops at the first failure: a
// guest without these pieces cannot run containers safely.
func Setup(log *slog.Logger) error {
	for _, m := range baseMounts {
		if err := doMount(m); err != nil {
			return err
		}
	}
	// On the read-only root disk, /etc/hostname, /etc/hosts and
	// /etc/resolv.conf are links into /run/etc (guest-image/build).
	if err := os.MkdirAll(RunEtc, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", RunEtc, err)
	}
	if err := mountCgroups(log); err != nil {
		return err
	}
	if kb, err := rootReadahead("/", "/sys"); err != nil {
		log.Warn("root disk readahead unchanged", "err", err)
	} else if kb > 0 {
		log.Info("root disk readahead", "kib", kb)
	}
	if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("link /dev/ptmx: %w", err)
	}
	loaded, err := LoadModules("/lib/modules", finitModule)
	if err != nil {
		return err
	}
	if len(loaded) > 0 {
		log.Info("kernel modules loaded", "modules", loaded)
	}
	if err := seedEntropy(log); err != nil {
		return err
	}
	if err := loopbackUp(); err != nil {
		return err
	}
	// Ports announced by the host after this point are still found by
	// transport.FindPort through sysfs.
	links, err := LinkVirtioPorts("/sys", "/dev")
	if err != nil {
		return err
	}
	log.Info("guest ready for the agent", "virtio_ports", links)
	return nil
}

func doMount(m mount) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil // the kernel mounted it already (devtmpfs.mount=1)
		}
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	mounted = append(mounted, m.target)
	return nil
}

// RootReadaheadKiB is the readahead Setup gives the root's block device.
// Every block read from the dm-verity root is hashed, and under TCG each
// request costs far more than its bytes: cold reads of runc and cloak-aa
// took 20 ms/MiB with the kernel's 128 KiB and 14 ms/MiB with 4 MiB
// (without verity: 8 ms/MiB). Binaries are read once per VM, mostly in
// order, so a large window wastes little.
const RootReadaheadKiB = 4096

// rootReadahead raises the readahead of the block device holding root (a
// path) to RootReadaheadKiB and returns the new value; 0 when root is not
// on a block device (an initramfs).
func rootReadahead(root, sys string) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", root, err)
	}
	return setReadahead(st.Dev, sys)
}

func setReadahead(dev uint64, sys string) (int, error) {
	if unix.Major(dev) == 0 {
		return 0, nil // tmpfs, ramfs, overlay: no block device
	}
	file := filepath.Join(sys, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)), "queue", "read_ahead_kb")
	if err := os.WriteFile(file, []byte(fmt.Sprint(RootReadaheadKiB)), 0); err != nil {
		return 0, fmt.Errorf("set %s: %w", file, err)
	}
	return RootReadaheadKiB, nil
}

// mountCgroups mounts cgroup v2 when the kernel has it, else the v1
// hierarchies the way runc expects them (one per controller under a tmpfs,
// with cpu,cpuacct and net_cls,net_prio co-mounted and linked).
func mountCgroups(log *slog.Logger) error {
	fss, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("read /proc/filesystems: %w", err)
	}
	if hasFilesystem(fss, "cgroup2") {
		log.Info("cgroups: v2")
		return doMount(mount{"cgroup2", "/sys/fs/cgroup", "cgroup2", nodevExec, "nsdelegate"})
	}
	if err := doMount(mount{"tmpfs", "/sys/fs/cgroup", "tmpfs", nodevExec, "mode=0755"}); err != nil {
		return err
	}
	cg, err := os.ReadFile("/proc/cgroups")
	if err != nil {
		return fmt.Errorf("read /proc/cgroups: %w", err)
	}
	hierarchies := V1Hierarchies(cg)
	for _, h := range hierarchies {
		if err := doMount(mount{"cgroup", "/sys/fs/cgroup/" + h, "cgroup", nodevExec, h}); err != nil {
			return err
		}
		if strings.Contains(h, ",") {
			for _, c := range strings.Split(h, ",") {
				if err := os.Symlink(h, "/sys/fs/cgroup/"+c); err != nil && !errors.Is(err, os.ErrExist) {
					return fmt.Errorf("link cgroup %s: %w", c, err)
				}
			}
		}
	}
	log.Info("cgroups: v1", "hierarchies", hierarchies)
	return nil
}

func hasFilesystem(procFilesystems []byte, name string) bool {
	for _, line := range strings.Split(string(procFilesystems), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == name {
			return true
		}
	}
	return false
}

// V1Hierarchies reads /proc/cgroups and returns the v1 mounts to make:
// enabled controllers, with cpu+cpuacct and net_cls+net_prio co-mounted as
// systemd and runc expect.
func V1Hierarchies(procCgroups []byte) []string {
	enabled := map[string]bool{}
	var order []string
	for _, line := range strings.Split(string(procCgroups), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 || strings.HasPrefix(f[0], "#") || f[3] != "1" {
			continue
		}
		enabled[f[0]] = true
		order = append(order, f[0])
	}
	var out []string
	for _, c := range order {
		switch {
		case c == "cpu" && enabled["cpuacct"]:
			out = append(out, "cpu,cpuacct")
		case c == "net_cls" && enabled["net_prio"]:
			out = append(out, "net_cls,net_prio")
		case (c == "cpuacct" && enabled["cpu"]) || (c == "net_prio" && enabled["net_cls"]):
		default:
			out = append(out, c)
		}
	}
	return out
}

var moduleName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// LoadModules loads the modules listed in dir/load.list, one name a line
// (# comments), in the listed order, which the image builder makes
// dependency order; each is dir/<name>.ko. No list means nothing to load.
// A module already loaded (or built in) is not an error.
func LoadModules(dir string, load func(path string) error) ([]string, error) {
	list, err := os.ReadFile(filepath.Join(dir, "load.list"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read module list: %w", err)
	}
	names, err := ParseModuleList(list)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if err := load(filepath.Join(dir, n+".ko")); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("load module %s: %w", n, err)
		}
	}
	return names, nil
}

// ParseModuleList reads a load.list: module names, one a line.
func ParseModuleList(b []byte) ([]string, error) {
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		// The image builder writes file names ("virtio_net.ko").
		s = strings.TrimSuffix(s, ".ko")
		if !moduleName.MatchString(s) {
			return nil, fmt.Errorf("module list line %d: %q is not a module name", line, s)
		}
		names = append(names, s)
	}
	return names, sc.Err()
}

func finitModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// seedEntropy makes sure the kernel's random pool is initialised before
// anything (TLS to the KBS, TEE keys) draws from it, without trusting the
// host for it.
//
// In a TEE the host controls every virtual device: a virtio-rng's bytes
// may be chosen by the host, so they must never be credited as entropy.
// What the host cannot see or set is the CPU's RDSEED/RDRAND (inside the
// TEE's trust base; the kernel mixes them in and trusts them by default)
// and the kernel's CPU-jitter entropy. So: virtio-rng's credit is set to
// zero (the kernel still mixes its bytes in, which cannot weaken the pool),
// and getrandom(2) is then waited on until the CRNG is initialised from
// the trusted sources. Crediting entropy through RNDADDENTROPY would need
// a source the kernel does not already use, and none exists in the guest.
func seedEntropy(log *slog.Logger) error {
	current, err := os.ReadFile("/sys/class/misc/hw_random/rng_current")
	if err == nil && strings.HasPrefix(strings.TrimSpace(string(current)), "virtio_rng") {
		if err := os.WriteFile("/sys/class/misc/hw_random/rng_quality", []byte("0"), 0); err != nil {
			return fmt.Errorf("stop crediting the host's virtio-rng: %w", err)
		}
		log.Info("entropy: virtio-rng is mixed in without credit (host-controlled)")
	}
	buf := make([]byte, 1)
	if _, err := unix.Getrandom(buf, unix.GRND_NONBLOCK); err == nil {
		return nil
	}
	start := time.Now()
	if _, err := unix.Getrandom(buf, 0); err != nil {
		return fmt.Errorf("wait for the kernel random pool: %w", err)
	}
	log.Info("entropy: random pool initialised", "waited", time.Since(start))
	return nil
}

func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// LinkVirtioPorts creates devRoot/virtio-ports/<name> -> ../vportNpM for
// every named port in sysRoot/class/virtio-ports, and returns the names.
func LinkVirtioPorts(sysRoot, devRoot string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(sysRoot, "class", "virtio-ports"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list virtio ports: %w", err)
	}
	var names []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysRoot, "class", "virtio-ports", e.Name(), "name"))
		name := strings.TrimSpace(string(b))
		// The name comes from the host: only a plain file name is linked.
		if err != nil || name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			continue
		}
		dir := filepath.Join(devRoot, "virtio-ports")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("virtio port links: %w", err)
		}
		if err := os.Symlink(filepath.Join("..", e.Name()), filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("link virtio port %s: %w", name, err)
		}
		names = append(names, name)
	}
	return names, nil
}

// PowerOff syncs, unmounts what Setup mounted and powers the VM off. It
// never returns: if the kernel refuses, PID 1 waits forever rather than
// exit (which would panic the kernel).
func PowerOff(log *slog.Logger) {
	unix.Sync()
	for i := len(mounted) - 1; i >= 0; i-- {
		// Lazy: container mounts may still hang below these.
		if err := unix.Unmount(mounted[i], unix.MNT_DETACH); err != nil {
			log.Warn("unmount at power-off", "path", mounted[i], "err", err)
		}
	}
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	log.Error("power off failed; halting here", "err", err)
	select {}
}

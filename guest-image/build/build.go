// Package build assembles Cloak's guest image reproducibly: Cloak's own
// kernel (build/kbuild, compiled from Debian's linux-source-6.12), a
// read-only root disk holding cloak-agent (PID 1), cloak-aa, a static runc and
// the CA bundle as EROFS verified by dm-verity (build/rootimg), whose root
// hash is on the kernel command line, and a manifest with the digests and the
// launch measurements. Beside it, in debian/, the same userland in an initrd
// for Debian's cloud kernel (with the modules it needs), which a handler may
// still select. The same inputs always give byte-identical files.
//
// This is build tooling that runs on the host; it imports only the
// measurements package and libraries, no guest or host runtime code.
package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cloak-containers/cloak/guest-image/build/initramfs"
	"github.com/cloak-containers/cloak/guest-image/build/kbuild"
	"github.com/cloak-containers/cloak/guest-image/build/kernel"
	"github.com/cloak-containers/cloak/guest-image/build/kmod"
	"github.com/cloak-containers/cloak/guest-image/build/rootimg"
	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/measurements/bundle"
)

// Cmdline is the guest kernel command line. It is part of the launch
// measurement, so a host cannot add to it without changing the measurement
// (in confidential mode), and the agent reads no configuration from it.
//
//	console=ttyS0   kernel and PID 1 messages on the first serial port, which
//	                the launcher logs to a file
//	loglevel=4      warnings and worse only: under TCG every console byte is
//	                an emulated UART write, and the log is host-visible
//	panic=-1        reboot at once on panic; the launcher runs QEMU with
//	                -no-reboot, so a panicking guest ends instead of hanging
//	reboot=t        reboot by triple fault: immediate, no firmware involved
//	random.trust_bootloader=off
//	                mix the RNG seed QEMU passes at boot (setup_data) but do
//	                not credit it: the host is not trusted. The CPU's RDRAND
//	                (inside the TEE) still initialises the CRNG at once.
//
// Options that would only speed up TCG boots (edd=off, i8042.*) were
// measured and saved under 10 ms each, so they are left out.
const Cmdline = "console=ttyS0 loglevel=4 panic=-1 reboot=t random.trust_bootloader=off"

// GuestModules are the modules the Debian-kernel flavour's initrd loads, by
// name; their dependencies are added from modules.dep. VIRTIO_PCI,
// VIRTIO_CONSOLE (the virtio-serial agent channel) and EXT4 are built into
// Debian's cloud kernel, which requiredConfig checks. Cloak's own kernel
// builds everything in and loads no module.
var GuestModules = []string{
	"virtio_net",                 // pod network (pulls failover, net_failover)
	"overlay",                    // container rootfs over the unpacked image layers
	"vmw_vsock_virtio_transport", // vsock agent channel on real hosts (pulls vsock, _common)
}

// requiredConfig are options the Debian-kernel flavour relies on being built
// into Debian's kernel. Cloak's kernel is checked against its whole fragment
// (kbuild.CheckConfig).
var requiredConfig = []string{
	"CONFIG_BLK_DEV_INITRD=y",
	"CONFIG_RD_ZSTD=y",
	"CONFIG_VIRTIO_PCI=y",
	"CONFIG_VIRTIO_CONSOLE=y",
	"CONFIG_DEVTMPFS=y",
}

// Paths inside the guest's root (the root disk, or the Debian flavour's
// initrd).
const (
	initPath     = "/init"                // the agent, in the initrd
	AgentPath    = "/usr/bin/cloak-agent" // the agent on the root disk: init= names it
	aaPath       = "/usr/bin/cloak-aa"
	runcPath     = "/usr/bin/runc"
	caBundlePath = "/etc/ssl/certs/ca-certificates.crt"
	modulesPath  = "/lib/modules"
	// LoadListPath lists the module files in /lib/modules in load order,
	// one per line; the agent loads exactly these with finit_module.
	LoadListPath = "/lib/modules/load.list"
)

// emptyDirs are mount points and scratch directories PID 1 needs before it
// can create anything itself.
var emptyDirs = []struct {
	path string
	perm os.FileMode
}{
	{"/proc", 0o555}, {"/sys", 0o555}, {"/dev", 0o755}, {"/run", 0o755},
	{"/tmp", 0o1777}, {"/etc", 0o755}, {"/var", 0o755}, {"/mnt", 0o755},
}

// etcLinks point the files the agent writes at boot (netconf: hostname,
// resolv.conf) and containers may bind (hosts) into /run/etc, a tmpfs,
// because the root disk is read-only.
var etcLinks = []struct{ name, target string }{
	{"/etc/hostname", "/run/etc/hostname"},
	{"/etc/hosts", "/run/etc/hosts"},
	{"/etc/resolv.conf", "/run/etc/resolv.conf"},
}

// HostCABundle is Debian's CA bundle (package ca-certificates).
const HostCABundle = "/etc/ssl/certs/ca-certificates.crt"

// Options select the inputs of a build. Empty fields take defaults.
type Options struct {
	// OutDir receives vmlinuz, root.img, manifest.json and debian/.
	OutDir string
	// CacheDir holds downloaded kernels and sources, built kernels and runc
	// binaries; default DefaultCacheDir().
	CacheDir string
	// KernelVersion is an exact Debian package version of
	// linux-image-6.12.*-cloud-amd64 for the Debian flavour; empty picks
	// the newest in bookworm-backports.
	KernelVersion string
	// KernelSourceVersion is the linux-source-6.12 version Cloak's kernel
	// is compiled from; default kernel.DefaultSourceVersion.
	KernelSourceVersion string
	// Kernel is a prebuilt kernel image used instead of compiling Cloak's
	// (tests, or a kernel built elsewhere); the manifest says so.
	Kernel string
	// Agent, AA and Runc are prebuilt static binaries; empty builds
	// ./cmd/cloak-agent and ./cmd/cloak-aa from the Cloak module around
	// SourceDir, and runc RuncVersion from its Go module (cached).
	Agent, AA, Runc string
	// SourceDir is any directory inside the Cloak checkout; default ".".
	SourceDir string
	// RuncVersion is the runc module version to build; default
	// DefaultRuncVersion.
	RuncVersion string
	// CABundle is the PEM bundle installed in the guest; default HostCABundle.
	CABundle string
	// SNPFirmware is an OVMF AMDSEV image: when set, the manifest records
	// the SEV-SNP measurement of every CPU model and vCPU count up to
	// SNPMaxVCPUs (default DefaultSNPMaxVCPUs).
	SNPFirmware string
	SNPMaxVCPUs int
	// TDXFirmware is an OVMF IntelTdx image: when set, the manifest records
	// MRTD, RTMR1 and RTMR2.
	TDXFirmware string
	// SignKey is a PEM private key (Ed25519, ECDSA P-256/P-384): when set,
	// Build also writes BundleFile, the signed reference values.
	SignKey string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// DefaultCacheDir returns $CLOAK_CACHE, or cloak/ in the user's cache
// directory ($HOME/.cache/cloak unless XDG_CACHE_HOME says otherwise).
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("CLOAK_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set CLOAK_CACHE): %w", err)
	}
	return filepath.Join(d, "cloak"), nil
}

// Build fetches and builds the inputs, assembles the image and writes it to
// o.OutDir. manifest.json is written last, so a directory with a manifest
// holds a complete image.
func Build(ctx context.Context, o Options) (*Manifest, error) {
	if o.OutDir == "" {
		return nil, errors.New("build: no output directory")
	}
	out := o.Progress
	if out == nil {
		out = io.Discard
	}
	progress := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	cache := o.CacheDir
	if cache == "" {
		var err error
		if cache, err = DefaultCacheDir(); err != nil {
			return nil, err
		}
	}

	var signer crypto.Signer
	if o.SignKey != "" {
		var err error
		if signer, err = bundle.LoadSigner(o.SignKey); err != nil {
			return nil, err
		}
	}
	kernelPath, kb := o.Kernel, KernelBuild{SourcePackage: "prebuilt"}
	if kernelPath == "" {
		ck, err := kbuild.Build(ctx, kbuild.Options{CacheDir: cache, SourceVersion: o.KernelSourceVersion, Progress: out})
		if err != nil {
			return nil, fmt.Errorf("guest kernel: %w", err)
		}
		progress("kernel: Cloak's, from %s %s (config %.12s)", ck.SourcePackage, ck.SourceVersion, ck.FragmentSHA256)
		kernelPath = ck.BzImage()
		kb = KernelBuild{SourcePackage: ck.SourcePackage, SourceVersion: ck.SourceVersion, SourceDebSHA256: ck.SourceDebSHA256,
			FragmentSHA256: ck.FragmentSHA256, Compiler: ck.Compiler}
	}
	dk, err := kernel.Fetch(ctx, kernel.Options{CacheDir: cache, Version: o.KernelVersion, Progress: out})
	if err != nil {
		return nil, fmt.Errorf("fetch Debian's kernel: %w", err)
	}
	progress("kernel: Debian's %s %s (debian/)", dk.Package, dk.Version)
	if err := checkConfig(dk.Config(), requiredConfig); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", dk.Version, err)
	}

	tmp, err := os.MkdirTemp("", "cloak-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var root string
	guestBinary := func(prebuilt, name string) ([]byte, error) {
		if prebuilt != "" {
			return readStatic(prebuilt)
		}
		if root == "" {
			src := o.SourceDir
			if src == "" {
				src = "."
			}
			if root, err = moduleRoot(ctx, src); err != nil {
				return nil, err
			}
		}
		progress("building %s...", name)
		return buildGuestBinary(ctx, root, name, tmp)
	}
	agent, err := guestBinary(o.Agent, "cloak-agent")
	if err != nil {
		return nil, err
	}
	aa, err := guestBinary(o.AA, "cloak-aa")
	if err != nil {
		return nil, err
	}

	runcBin := o.Runc
	if runcBin == "" {
		v := o.RuncVersion
		if v == "" {
			v = DefaultRuncVersion
		}
		if runcBin, err = cachedRunc(ctx, cache, v, progress); err != nil {
			return nil, err
		}
	}
	runc, err := readStatic(runcBin)
	if err != nil {
		return nil, err
	}
	runcVer, err := runcVersion(ctx, runcBin)
	if err != nil {
		return nil, err
	}

	caPath := o.CABundle
	if caPath == "" {
		caPath = HostCABundle
	}
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle (Debian: apt-get install ca-certificates): %w", err)
	}

	// Cloak's kernel and the root disk.
	vmlinuz, err := os.ReadFile(kernelPath)
	if err != nil {
		return nil, fmt.Errorf("read kernel: %w", err)
	}
	tree, err := rootTree(agent, aa, runc, ca)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	// A stale manifest must not describe new artifacts while they are
	// being written.
	if err := os.Remove(filepath.Join(o.OutDir, ManifestFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	progress("writing root disk (EROFS + dm-verity, %d files)...", tree.Len())
	rootImg, err := rootimg.Build(ctx, tree, filepath.Join(o.OutDir, RootFile))
	if err != nil {
		return nil, err
	}
	cmdline := Cmdline + " " + rootImg.KernelArgs(AgentPath)

	// Debian's kernel with the same userland in an initrd.
	dvmlinuz, err := os.ReadFile(dk.Vmlinuz())
	if err != nil {
		return nil, fmt.Errorf("read kernel: %w", err)
	}
	a, modules, err := assemble(dk.ModulesDir(), agent, aa, runc, ca)
	if err != nil {
		return nil, err
	}
	cpio, err := a.Cpio()
	if err != nil {
		return nil, err
	}
	progress("writing debian/initrd.img (%d files, %.1f MiB uncompressed)...", a.Len(), float64(len(cpio))/(1<<20))
	dinitrd, err := initramfs.Compress(cpio)
	if err != nil {
		return nil, err
	}

	m := &Manifest{
		Schema:      Schema,
		Kernel:      artifactOf(vmlinuz),
		Root:        RootDisk{File: RootFile, FS: "erofs", Image: *rootImg},
		Cmdline:     cmdline,
		KernelBuild: kb,
		RuncVersion: runcVer,
		Files: []File{
			fileOf(caBundlePath, 0o644, ca), fileOf(aaPath, 0o755, aa),
			fileOf(AgentPath, 0o755, agent), fileOf(runcPath, 0o755, runc),
		},
		Measurements: Measurements{
			Emulated: hex.EncodeToString(measurements.EmulatedLaunchDigest(vmlinuz, nil, cmdline)),
		},
		Debian: DebianFlavour{
			Kernel:  artifactOf(dvmlinuz),
			Initrd:  artifactOf(dinitrd),
			Cmdline: Cmdline,
			KernelPackage: KernelPackage{
				Name: dk.Package, Version: dk.Version, Release: dk.Release, DebSHA256: dk.DebSHA256,
			},
			Modules: modules,
			Measurements: Measurements{
				Emulated: hex.EncodeToString(measurements.EmulatedLaunchDigest(dvmlinuz, dinitrd, Cmdline)),
			},
		},
	}
	if o.SNPFirmware != "" {
		maxVCPUs := o.SNPMaxVCPUs
		if maxVCPUs == 0 {
			maxVCPUs = DefaultSNPMaxVCPUs
		}
		progress("SEV-SNP measurements over %s, 1-%d vCPUs...", o.SNPFirmware, maxVCPUs)
		if m.Measurements.SNP, err = measureSNP(o.SNPFirmware, maxVCPUs, vmlinuz, nil, cmdline); err != nil {
			return nil, err
		}
	}
	if o.TDXFirmware != "" {
		progress("TDX measurements over %s...", o.TDXFirmware)
		if m.Measurements.TDX, err = measureTDX(o.TDXFirmware, vmlinuz, nil, cmdline); err != nil {
			return nil, err
		}
	}
	if err := write(o.OutDir, vmlinuz, dvmlinuz, dinitrd, m); err != nil {
		return nil, err
	}
	if err := writeBundle(o.OutDir, m, signer); err != nil {
		return nil, err
	}
	return m, nil
}

// rootTree lays out the root disk: the same binaries as the initrd, the
// agent as /usr/bin/cloak-agent (init= names it), links from /etc into
// /run/etc, no modules.
func rootTree(agent, aa, runc, ca []byte) (*initramfs.Archive, error) {
	var a initramfs.Archive
	var addErr error
	add := func(err error) {
		if addErr == nil {
			addErr = err
		}
	}
	for _, d := range emptyDirs {
		add(a.Dir(d.path, d.perm))
	}
	add(a.File(AgentPath, 0o755, agent))
	add(a.File(aaPath, 0o755, aa))
	add(a.File(runcPath, 0o755, runc))
	add(a.File(caBundlePath, 0o644, ca))
	for _, l := range etcLinks {
		add(a.Symlink(l.name, l.target))
	}
	if addErr != nil {
		return nil, fmt.Errorf("root disk layout: %w", addErr)
	}
	return &a, nil
}

// assemble lays out the initrd tree and returns it with the module file
// names in load order.
func assemble(modulesDir string, agent, aa, runc, ca []byte) (*initramfs.Archive, []string, error) {
	var a initramfs.Archive
	var addErr error // first failure; later adds are harmless no-ops
	add := func(err error) {
		if addErr == nil {
			addErr = err
		}
	}
	for _, d := range emptyDirs {
		add(a.Dir(d.path, d.perm))
	}
	add(a.File(initPath, 0o755, agent))
	add(a.File(aaPath, 0o755, aa))
	add(a.File(runcPath, 0o755, runc))
	add(a.File(caBundlePath, 0o644, ca))

	f, err := os.Open(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, nil, fmt.Errorf("kernel modules index: %w", err)
	}
	deps, err := kmod.ParseDep(f)
	f.Close()
	if err != nil {
		return nil, nil, err
	}
	entries, err := deps.Resolve(GuestModules)
	if err != nil {
		return nil, nil, fmt.Errorf("guest modules: %w", err)
	}
	var names []string
	for _, e := range entries {
		ko, err := kmod.Load(modulesDir, e.Path)
		if err != nil {
			return nil, nil, err
		}
		name := kmod.Name(e.Path) + ".ko"
		add(a.File(path.Join(modulesPath, name), 0o644, ko))
		names = append(names, name)
	}
	add(a.File(LoadListPath, 0o644, []byte(strings.Join(names, "\n")+"\n")))
	if addErr != nil {
		return nil, nil, fmt.Errorf("initrd layout: %w", addErr)
	}
	return &a, names, nil
}

func fileOf(p string, perm os.FileMode, b []byte) File {
	s := sha256.Sum256(b)
	return File{Path: p, Mode: fmt.Sprintf("%04o", perm), Size: int64(len(b)), SHA256: hex.EncodeToString(s[:])}
}

func write(dir string, vmlinuz, dvmlinuz, dinitrd []byte, m *Manifest) error {
	mb, err := m.marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, DebianDir), 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	// A previous layout's initrd beside Cloak's kernel would look bootable.
	if err := os.Remove(filepath.Join(dir, InitrdFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{KernelFile, vmlinuz},
		{filepath.Join(DebianDir, KernelFile), dvmlinuz}, {filepath.Join(DebianDir, InitrdFile), dinitrd},
		{ManifestFile, mb},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.b, 0o644); err != nil {
			return fmt.Errorf("write image: %w", err)
		}
	}
	return nil
}

// checkConfig checks that a kernel config file sets every "CONFIG_X=v" line
// in want.
func checkConfig(configPath string, want []string) error {
	b, err := os.ReadFile(configPath)
	if err != nil {
		return fmt.Errorf("kernel config: %w", err)
	}
	have := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		have[strings.TrimSpace(sc.Text())] = true
	}
	var missing []string
	for _, w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kernel config lacks %s, which the image relies on", strings.Join(missing, ", "))
	}
	return nil
}

// TrivialInitrd returns a compressed initrd holding only initBinary as /init,
// built the same reproducible way as the image's initrd. The boot benchmark
// boots it as the floor: the same kernel doing nothing but start PID 1.
func TrivialInitrd(initBinary []byte) ([]byte, error) {
	if err := checkStatic(initBinary); err != nil {
		return nil, fmt.Errorf("init binary: %w", err)
	}
	var a initramfs.Archive
	if err := a.File(initPath, 0o755, initBinary); err != nil {
		return nil, err
	}
	cpio, err := a.Cpio()
	if err != nil {
		return nil, err
	}
	return initramfs.Compress(cpio)
}

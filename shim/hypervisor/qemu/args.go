package qemu

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// QOM ids used on the command line.
const (
	idSNP     = "sev0"
	idTDX     = "tdx0"
	idMemory  = "ram0"
	idConsole = "console"
	idAgent   = "agent"
	// idAgentPort names the virtserialport so its VSERPORT_CHANGE events
	// (guest opened or closed the port) can be told apart.
	idAgentPort = "agent-port"
	idSerial    = "vserial0"
	idNet       = "net0"
	idFS        = "fs0"
)

// tcgTBSizeMiB caps TCG's translation cache. QEMU's default is 1 GiB (an
// eighth of host RAM at most), which a long-lived pod VM fills over time, all
// of it in QEMU's RSS. Booting the Debian cloud kernel 6.12 to a trivial init
// that powers off generates 54 MB of code; QEMU's own anonymous memory
// (RssAnon from /proc/PID/status after the SHUTDOWN event, guest RAM kept
// apart in a memfd backend) and boot wall time, mean of 5 alternating runs
// on a 2-core host at load 3-4, 2026-12-03:
//
//	tb-size  flushes  RssAnon  wall    QEMU CPU
//	default  0        87 MiB   5.62 s  5.09 s
//	64       0        88 MiB   5.86 s  5.34 s
//	48       1        78 MiB   5.96 s  5.52 s
//	32       1        63 MiB   5.73 s  5.25 s
//	24       2        54 MiB   6.04 s  5.40 s
//	16       4        46 MiB   6.09 s  5.53 s
//
// 32 MiB saves 24 MiB per VM at boot, and bounds the cache for good, at one
// flush and boot time within noise; 16 and 24 retranslate visibly. Command:
// qemu-system-x86_64 -accel tcg,thread=multi,tb-size=N -cpu max -m 512M
// -smp 1 -nodefaults -no-user-config -nographic -no-reboot -machine
// q35,memory-backend=m -object memory-backend-memfd,id=m,size=512M,share=on
// -kernel vmlinuz -initrd trivial.img -append "console=ttyS0 quiet panic=-1"
// -serial file:S -no-shutdown -qmp unix:Q,server=on,wait=off, then QMP
// "info jit" for flushes and code size.
const tcgTBSizeMiB = 32

// snpPolicy is SNP guest policy 0x30000: bit 16 is reserved and must be set,
// bit 17 allows SMT on the host; debugging and migration stay off.
const snpPolicy = "0x30000"

// Args builds QEMU's argument list (without the binary) for cfg. It is a pure
// function of cfg: Accel must already be kvm or tcg (see ResolveAccel).
func Args(cfg Config) ([]string, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Accel == AccelAuto {
		return nil, fmt.Errorf("accel %q must be resolved to %q or %q before building a command line (ResolveAccel)", AccelAuto, AccelKVM, AccelTCG)
	}

	a := []string{
		// No default devices, config files or display: everything the guest
		// sees is listed below, which keeps the launch measurable.
		"-nodefaults", "-no-user-config", "-nographic",
		// A guest reboot ends the VM; the shim decides what happens next.
		"-no-reboot",
		"-machine", machineOption(cfg),
	}
	switch cfg.Accel {
	case AccelTCG:
		// -cpu host needs KVM; max gives TCG every feature it emulates.
		a = append(a, "-accel", "tcg,thread=multi,tb-size="+strconv.Itoa(tcgTBSizeMiB), "-cpu", "max")
	case AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	}
	mem := strconv.Itoa(cfg.MemoryMiB) + "M"
	a = append(a, "-smp", strconv.Itoa(cfg.VCPUs), "-m", mem)

	if cfg.SharedFS.Dir != "" {
		// virtiofsd reads and writes the guest's buffers in its memory
		// directly: guest RAM must be a shared mapping it can map.
		a = append(a, "-object", "memory-backend-memfd,id="+idMemory+",size="+mem+",share=on")
	}
	switch cfg.TEE.Kind {
	case TEESNP:
		// SNP keeps private memory in guest_memfd; the shared part comes
		// from this memfd backend, shared so vhost devices can map it.
		a = append(a,
			"-object", "memory-backend-memfd,id="+idMemory+",size="+mem+",share=on",
			"-object", strings.Join([]string{
				"sev-snp-guest", "id=" + idSNP,
				// C-bit position and address bits lost to encryption on
				// Milan, Genoa and Turin.
				"cbitpos=51", "reduced-phys-bits=1",
				// OVMF checks kernel, initrd and command line against
				// hashes that are part of the launch measurement.
				"kernel-hashes=on",
				"host-data=" + base64.StdEncoding.EncodeToString(cfg.TEE.InitdataDigest),
				"policy=" + snpPolicy,
			}, ","))
	case TEETDX:
		obj, err := tdxObject(cfg.TEE.InitdataDigest)
		if err != nil {
			return nil, err
		}
		a = append(a, "-object", obj)
	}
	if cfg.Firmware != "" {
		a = append(a, "-bios", cfg.Firmware)
	}
	if cfg.Kernel != "" {
		a = append(a, "-kernel", cfg.Kernel)
	}
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	}
	if cfg.Cmdline != "" {
		a = append(a, "-append", cfg.Cmdline)
	}

	a = append(a, "-qmp", "unix:"+escape(cfg.QMPSocket())+",server=on,wait=off")
	if cfg.ConsoleLog != "" {
		a = append(a,
			"-chardev", "file,id="+idConsole+",path="+escape(cfg.ConsoleLog),
			"-serial", "chardev:"+idConsole)
	}

	// The root disk's device comes first: PCI slots, and so the order the
	// guest probes devices in, follow the command line.
	a = append(a, rootDiskArgs(cfg)...)
	virtio := virtioOptions(cfg)
	switch cfg.Agent.Kind {
	case AgentVirtioSerial:
		a = append(a,
			"-device", "virtio-serial-pci,id="+idSerial+virtio,
			"-chardev", "socket,id="+idAgent+",path="+escape(cfg.AgentSocket())+",server=on,wait=off",
			"-device", "virtserialport,bus="+idSerial+".0,chardev="+idAgent+",id="+idAgentPort+",name="+cfg.Agent.PortName)
	case AgentVsock:
		a = append(a, "-device", "vhost-vsock-pci,id=vsock0,guest-cid="+strconv.FormatUint(uint64(cfg.Agent.CID), 10)+virtio)
	}
	a = append(a, spArgs(cfg)...)
	a = append(a, tpmArgs(cfg)...)
	if cfg.SharedFS.Dir != "" {
		a = append(a,
			"-chardev", "socket,id="+idFS+",path="+escape(cfg.VirtiofsdSocket()),
			"-device", "vhost-user-fs-pci,chardev="+idFS+",tag="+cfg.SharedFS.Tag+",queue-size=1024")
	}
	// romfile= skips the iPXE option ROM: the kernel is loaded directly,
	// so network boot firmware would only cost boot time.
	switch cfg.Network.Kind {
	case NetworkUser:
		a = append(a,
			"-netdev", "user,id="+idNet,
			"-device", "virtio-net-pci,netdev="+idNet+",romfile="+virtio)
	case NetworkTAP:
		for i, t := range cfg.Network.TAPs {
			id := idNet + strconv.Itoa(i)
			// The TAPs are the child's descriptors 3, 4, ... (ExtraFiles).
			a = append(a,
				"-netdev", "tap,id="+id+",fd="+strconv.Itoa(3+i),
				"-device", "virtio-net-pci,netdev="+id+",mac="+t.MAC.String()+",romfile="+virtio)
		}
	}
	return a, nil
}

func machineOption(cfg Config) string {
	opts := []string{string(cfg.Machine)}
	switch cfg.Machine {
	case MachineMicroVM:
		// PCIe on microvm lets the guest use the same virtio-pci drivers
		// (built into the kernel) as on q35; virtio-mmio is a module.
		opts = append(opts, "pcie=on")
	case MachineQ35:
		// Legacy devices the guest never uses (AHCI, SMBus, VMware
		// port, PS/2, HPET: the clocksource is the TSC either way): each
		// is host code the guest can poke and probes at boot. Together
		// -4 MiB of QEMU RSS, boot time within noise; the guest keeps
		// time (5.02 s monotonic over 5.02 s of host time, clocksource
		// tsc). SNP and TDX need none of them; under TDX they shape the
		// ACPI tables and so RTMR0, which is taken from a known-good TD
		// (measurements/tdx), not computed.
		opts = append(opts, "sata=off", "smbus=off", "vmport=off", "i8042=off", "hpet=off")
		if cfg.Accel == AccelTCG {
			// Without the emulated 8254 and 8259 Linux calibrates the
			// TSC without them: guest uptime at init 3.0 s instead of
			// 4.0 s, wall -0.35 s (5 alternating runs). Linux panics
			// ("IO-APIC + timer doesn't work") with pit=off alone, and
			// microvm hangs with both off, so q35 only; not under KVM,
			// whose in-kernel PIT costs nothing and where this is
			// untested.
			opts = append(opts, "pit=off", "pic=off")
		}
	}
	// Guest RAM stays out of QEMU core dumps (pod memory, and GiBs per
	// crash) and out of KSM, which would let one pod VM time another's
	// pages through copy-on-write of merged pages.
	opts = append(opts, "dump-guest-core=off", "mem-merge=off")
	if cfg.SharedFS.Dir != "" {
		opts = append(opts, "memory-backend="+idMemory)
	}
	switch cfg.TEE.Kind {
	case TEESNP:
		opts = append(opts, "confidential-guest-support="+idSNP, "memory-backend="+idMemory)
	case TEETDX:
		opts = append(opts, "kernel-irqchip=split", "confidential-guest-support="+idTDX)
	}
	return strings.Join(opts, ",")
}

// virtioOptions returns extra options for virtio PCI devices. A confidential
// guest only drives virtio devices that offer VIRTIO_F_ACCESS_PLATFORM (DMA
// through bounce buffers in shared memory), which iommu_platform turns on;
// legacy virtio cannot offer it.
func virtioOptions(cfg Config) string {
	if cfg.TEE.Kind == TEENone {
		return ""
	}
	return ",disable-legacy=on,iommu_platform=on"
}

// tdxObject is the tdx-guest object in QEMU's JSON syntax, the only one that
// takes nested and binary-safe values cleanly.
func tdxObject(mrconfigid []byte) (string, error) {
	obj := struct {
		QOMType    string `json:"qom-type"`
		ID         string `json:"id"`
		MRConfigID string `json:"mrconfigid"`
		// Linux refuses to run as a TD unless EPT violations on private
		// memory are fatal instead of turned into #VE.
		SEPTVEDisable bool `json:"sept-ve-disable"`
	}{"tdx-guest", idTDX, base64.StdEncoding.EncodeToString(mrconfigid), true}
	b, err := json.Marshal(obj)
	if err != nil {
		return "", fmt.Errorf("encode tdx-guest object: %w", err)
	}
	return string(b), nil
}

// escape doubles commas, QEMU's escape inside key=value option lists.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// commandLine renders a binary and its arguments for logs and error messages,
// quoting arguments a shell would split.
func commandLine(binary string, args []string) string {
	parts := make([]string, 0, len(args)+1)
	for _, s := range append([]string{binary}, args...) {
		if s == "" || strings.ContainsAny(s, " \t\n\"'\\$`{}*?;&|<>()") {
			s = strconv.Quote(s)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

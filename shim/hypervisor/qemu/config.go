// Package qemu launches one pod VM under QEMU: it turns a typed Config into a
// command line, starts and stops the process, talks QMP, and connects to the
// in-guest agent over virtio-serial or vsock.
//
// QEMU is outside Cloak's trust boundary: what it reports over QMP is used for
// lifecycle decisions only, never for security decisions, and its replies are
// parsed with size limits.
package qemu

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Machine is the QEMU machine type.
type Machine string

// Machine types Cloak knows how to configure.
const (
	MachineQ35     Machine = "q35"
	MachineMicroVM Machine = "microvm"
)

// Accel selects the accelerator. AccelAuto is resolved by ResolveAccel before
// a command line is built.
type Accel string

// Accelerators.
const (
	AccelAuto Accel = "auto"
	AccelKVM  Accel = "kvm"
	AccelTCG  Accel = "tcg"
)

// AgentKind is the transport between the host and the in-guest agent.
type AgentKind string

// Agent transports.
const (
	// AgentVirtioSerial is a virtserialport bound to a unix socket on the
	// host. It works everywhere, including hosts without vhost-vsock.
	AgentVirtioSerial AgentKind = "virtio-serial"
	// AgentVsock is vhost-vsock-pci; the host dials (CID, Port).
	AgentVsock AgentKind = "vsock"
)

// Defaults applied to zero fields of Config.
const (
	DefaultBinary                = "qemu-system-x86_64"
	DefaultVCPUs                 = 1
	DefaultMemoryMiB             = 512
	DefaultAgentPortName         = "cloak.agent"
	DefaultAgentVsockPort uint32 = 1024
)

// Agent configures the agent channel.
type Agent struct {
	Kind AgentKind
	// PortName is the virtserialport name the guest finds under
	// /sys/class/virtio-ports/*/name (virtio-serial only).
	PortName string
	// CID is the guest's vsock context ID, 3 or above (vsock only).
	CID uint32
	// Port is the vsock port the agent listens on (vsock only).
	Port uint32
}

// NetworkKind is how the guest reaches the network.
type NetworkKind string

// Network kinds.
const (
	NetworkNone NetworkKind = "none"
	// NetworkUser is QEMU's user-mode stack: the guest is 10.0.2.15 and
	// reaches the host's loopback at 10.0.2.2. For standalone use and CI.
	NetworkUser NetworkKind = "user"
	// NetworkTAP attaches TAP devices the caller opened in the pod's
	// network namespace (shim/network), one guest NIC each.
	NetworkTAP NetworkKind = "tap"
)

// MaxTAPs bounds the NICs of one VM.
const MaxTAPs = 16

// Network configures the guest NICs.
type Network struct {
	Kind NetworkKind
	// TAPs (Kind tap) are passed to QEMU as inherited descriptors 3, 4, ...
	// in this order; each becomes a virtio-net NIC with the given MAC.
	TAPs []TAPDevice
}

// TAPDevice is an open TAP device and the MAC the guest NIC must have (the
// pod interface's, so that neighbours' ARP caches stay right).
type TAPDevice struct {
	File *os.File
	MAC  net.HardwareAddr
}

// TEEKind is the confidential-computing technology the guest runs under.
type TEEKind string

// TEE kinds.
const (
	TEENone TEEKind = "none"
	TEESNP  TEEKind = "snp"
	TEETDX  TEEKind = "tdx"
)

// Digest sizes the hardware reserves for the initdata binding.
const (
	SNPHostDataSize   = 32 // SNP HOST_DATA
	TDXMRConfigIDSize = 48 // TDX MRCONFIGID
)

// TEE configures the confidential guest object.
type TEE struct {
	Kind TEEKind
	// InitdataDigest is bound into the hardware report: SNP HOST_DATA
	// (32 bytes, sha256 of the initdata document) or TDX MRCONFIGID
	// (48 bytes, sha384). Required for SNP and TDX: without it the guest
	// could not check the configuration and policy it is handed.
	InitdataDigest []byte
}

// Defaults of SharedFS.
const (
	DefaultSharedFSTag = "cloak-shared"
	DefaultVirtiofsd   = "/usr/libexec/virtiofsd"
	// maxTagLen is the size of virtio-fs's tag field.
	maxTagLen = 36
)

// SharedFS is a host directory the guest mounts over virtio-fs
// (vhost-user-fs-pci served by virtiofsd). Only for non-confidential
// guests: the host sees and changes everything in it.
type SharedFS struct {
	// Dir is the shared directory; empty: no virtio-fs device.
	Dir string
	// Tag names the share in the guest (mount -t virtiofs TAG).
	Tag string
	// Virtiofsd is the daemon Start runs for Dir before QEMU.
	Virtiofsd string
}

// Config describes one VM. Zero fields take the defaults above; RunDir is
// required.
type Config struct {
	Binary    string // default qemu-system-x86_64 (looked up in PATH)
	Machine   Machine
	Accel     Accel
	VCPUs     int
	MemoryMiB int

	Kernel string
	// Initrd is optional: a kernel with its root disk driver built in
	// boots RootDisk (root=/dev/vda) without one.
	Initrd  string
	Cmdline string
	// RootDisk is a raw disk image the guest sees read-only as /dev/vda.
	// Empty: no disk.
	RootDisk string
	// Firmware is loaded with -bios. SNP and TDX need an OVMF build with
	// their support (for SNP, one that checks the kernel hashes).
	Firmware string

	// ConsoleLog receives the guest's first serial port. Empty: no serial
	// port at all.
	ConsoleLog string
	// RunDir holds the VM's sockets and QEMU's own log. Start creates it
	// (0700) and Stop deletes it with everything inside, so it must be
	// absent or empty and belong to this VM alone.
	RunDir string

	Agent    Agent
	Network  Network
	TEE      TEE
	SharedFS SharedFS
	// EmulatedSP adds the virtio-serial port SPPortName bound to SPSocket,
	// where the shim's emulated SEV-SNP secure processor answers report
	// requests (tee "emulated"; never with a real TEE).
	EmulatedSP bool
	// TPM attaches a swtpm vTPM (StateDir empty: none).
	TPM VTPM
}

// unixPathMax is sizeof(sockaddr_un.sun_path) minus the NUL on Linux.
const unixPathMax = 107

// QMPSocket is the path of the QMP control socket.
func (c Config) QMPSocket() string { return filepath.Join(c.RunDir, "qmp.sock") }

// AgentSocket is the host end of the virtio-serial agent channel.
func (c Config) AgentSocket() string { return filepath.Join(c.RunDir, "agent.sock") }

// VirtiofsdSocket is the vhost-user socket virtiofsd serves and QEMU
// connects to.
func (c Config) VirtiofsdSocket() string { return filepath.Join(c.RunDir, "virtiofsd.sock") }

// VirtiofsdLog receives virtiofsd's stdout and stderr.
func (c Config) VirtiofsdLog() string { return filepath.Join(c.RunDir, "virtiofsd.log") }

// QEMULog receives QEMU's stdout and stderr.
func (c Config) QEMULog() string { return filepath.Join(c.RunDir, "qemu.log") }

func (c Config) withDefaults() Config {
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	if c.Machine == "" {
		c.Machine = MachineQ35
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	if c.VCPUs == 0 {
		c.VCPUs = DefaultVCPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.Agent.Kind == "" {
		c.Agent.Kind = AgentVirtioSerial
	}
	switch c.Agent.Kind {
	case AgentVirtioSerial:
		if c.Agent.PortName == "" {
			c.Agent.PortName = DefaultAgentPortName
		}
	case AgentVsock:
		if c.Agent.Port == 0 {
			c.Agent.Port = DefaultAgentVsockPort
		}
	}
	if c.Network.Kind == "" {
		c.Network.Kind = NetworkNone
	}
	if c.TEE.Kind == "" {
		c.TEE.Kind = TEENone
	}
	if c.SharedFS.Dir != "" {
		if c.SharedFS.Tag == "" {
			c.SharedFS.Tag = DefaultSharedFSTag
		}
		if c.SharedFS.Virtiofsd == "" {
			c.SharedFS.Virtiofsd = DefaultVirtiofsd
		}
	}
	return c
}

// validate checks a config that already has its defaults. Accel may still be
// auto here; Args rejects that separately.
func (c Config) validate() error {
	if c.RunDir == "" {
		return fmt.Errorf("run dir is empty: set Config.RunDir to a per-VM directory")
	}
	if !filepath.IsAbs(c.RunDir) {
		return fmt.Errorf("run dir %q is relative: use an absolute path", c.RunDir)
	}
	for _, s := range []string{c.QMPSocket(), c.AgentSocket(), c.VirtiofsdSocket(), c.SPSocket(), c.SwtpmSocket()} {
		if len(s) > unixPathMax {
			return fmt.Errorf("socket path %q is %d bytes, over the unix socket limit of %d: use a shorter run dir", s, len(s), unixPathMax)
		}
	}
	switch c.Machine {
	case MachineQ35, MachineMicroVM:
	default:
		return fmt.Errorf("machine %q is not supported: use %q or %q", c.Machine, MachineQ35, MachineMicroVM)
	}
	switch c.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("accel %q is not supported: use %q, %q or %q", c.Accel, AccelAuto, AccelKVM, AccelTCG)
	}
	// q35 takes up to 288 vCPUs without an IOMMU; more is a typo.
	if c.VCPUs < 1 || c.VCPUs > 288 {
		return fmt.Errorf("vcpus %d out of range 1..288", c.VCPUs)
	}
	if c.MemoryMiB < 64 {
		return fmt.Errorf("memory %d MiB is below the 64 MiB a guest kernel needs", c.MemoryMiB)
	}
	if c.Kernel == "" && (c.Initrd != "" || c.Cmdline != "") {
		return fmt.Errorf("initrd or kernel command line given without a kernel")
	}
	if err := c.validateAgent(); err != nil {
		return err
	}
	switch c.Network.Kind {
	case NetworkNone, NetworkUser:
		if len(c.Network.TAPs) > 0 {
			return fmt.Errorf("network %q takes no TAP devices", c.Network.Kind)
		}
	case NetworkTAP:
		if len(c.Network.TAPs) == 0 || len(c.Network.TAPs) > MaxTAPs {
			return fmt.Errorf("network tap needs 1 to %d TAP devices, got %d", MaxTAPs, len(c.Network.TAPs))
		}
		for i, t := range c.Network.TAPs {
			if t.File == nil || len(t.MAC) != 6 {
				return fmt.Errorf("TAP device %d: needs an open file and a 6-byte MAC", i)
			}
		}
	default:
		return fmt.Errorf("network %q is not supported: use %q, %q or %q", c.Network.Kind, NetworkNone, NetworkUser, NetworkTAP)
	}
	if err := c.validateRootDisk(); err != nil {
		return err
	}
	if err := c.validateSharedFS(); err != nil {
		return err
	}
	if err := c.validateSP(); err != nil {
		return err
	}
	if err := c.validateTPM(); err != nil {
		return err
	}
	return c.validateTEE()
}

func (c Config) validateSharedFS() error {
	fs := c.SharedFS
	if fs.Dir == "" {
		return nil
	}
	if c.TEE.Kind != TEENone {
		return fmt.Errorf("a shared directory (virtio-fs) with tee %q: a confidential guest shares no host directory", c.TEE.Kind)
	}
	if !filepath.IsAbs(fs.Dir) || !filepath.IsAbs(fs.Virtiofsd) {
		return fmt.Errorf("shared dir %q and virtiofsd %q must be absolute paths", fs.Dir, fs.Virtiofsd)
	}
	if len(fs.Tag) > maxTagLen || !portNameChars(fs.Tag) {
		return fmt.Errorf("virtio-fs tag %q: use up to %d letters, digits, '.', '-' and '_'", fs.Tag, maxTagLen)
	}
	return nil
}

// portNameChars reports whether s uses only characters that need no
// escaping in an option list and that the guest sees as they are.
func portNameChars(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	})
}

func (c Config) validateAgent() error {
	switch c.Agent.Kind {
	case AgentVirtioSerial:
		// The name travels inside a -device option list; keep it to
		// characters that need no escaping and that sysfs shows as-is.
		if !portNameChars(c.Agent.PortName) {
			return fmt.Errorf("agent port name %q: use only letters, digits, '.', '-' and '_'", c.Agent.PortName)
		}
	case AgentVsock:
		// CIDs 0-2 are the hypervisor, local and host; ^0 is "any".
		if c.Agent.CID < 3 || c.Agent.CID == ^uint32(0) {
			return fmt.Errorf("vsock agent needs a guest CID of 3 or above, got %d", c.Agent.CID)
		}
	default:
		return fmt.Errorf("agent channel %q is not supported: use %q or %q", c.Agent.Kind, AgentVirtioSerial, AgentVsock)
	}
	return nil
}

func (c Config) validateTEE() error {
	var size int
	switch c.TEE.Kind {
	case TEENone:
		return nil
	case TEESNP:
		size = SNPHostDataSize
	case TEETDX:
		size = TDXMRConfigIDSize
	default:
		return fmt.Errorf("tee %q is not supported: use %q, %q or %q", c.TEE.Kind, TEENone, TEESNP, TEETDX)
	}
	if c.Machine != MachineQ35 {
		return fmt.Errorf("%s needs machine %q, not %q", c.TEE.Kind, MachineQ35, c.Machine)
	}
	if c.Accel == AccelTCG {
		return fmt.Errorf("%s needs KVM on a host with %s enabled; TCG cannot run it (use tee %q for an emulated TEE)", c.TEE.Kind, c.TEE.Kind, TEENone)
	}
	if c.Firmware == "" {
		return fmt.Errorf("%s needs Firmware: an OVMF build with %s support", c.TEE.Kind, c.TEE.Kind)
	}
	if c.Kernel == "" {
		return fmt.Errorf("%s needs a Kernel: the launch measurement covers kernel, initrd and command line", c.TEE.Kind)
	}
	if len(c.TEE.InitdataDigest) != size {
		return fmt.Errorf("%s initdata digest must be %d bytes, got %d", c.TEE.Kind, size, len(c.TEE.InitdataDigest))
	}
	return nil
}

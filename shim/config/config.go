// Package config is the shim's runtime configuration: one TOML file per
// containerd runtime handler, named by containerd's ConfigPath runtime option.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/cloak-containers/cloak/measurements/snp"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// Defaults, documented in shim/README.md.
const (
	DefaultImageDir = "/usr/share/cloak/image"
	DefaultRunDir   = "/run/cloak"
	// DefaultEmulatedSNPCPUType is the CPU model the emulated SEV-SNP
	// platform measures for when emulated_snp_firmware is set.
	DefaultEmulatedSNPCPUType  = "EPYC-Milan"
	DefaultAgentTimeoutSeconds = 180
	// maxFileSize bounds the config file: it is read by a root process.
	maxFileSize = 1 << 20
)

// Config is the content of a configuration file; zero values mean the
// documented defaults (see WithDefaults).
type Config struct {
	// ImageDir holds the guest image: vmlinuz, root.img, manifest.json
	// and debian/ (from `make image` / cloak-image build).
	ImageDir string `toml:"image_dir"`
	// Accel is auto | kvm | tcg.
	Accel     string `toml:"accel"`
	VCPUs     int    `toml:"vcpus"`
	MemoryMiB int    `toml:"memory_mib"`
	// RunDir holds one directory per VM (QMP and agent sockets); keep it
	// short: unix socket paths are limited to 108 bytes.
	RunDir string `toml:"run_dir"`
	// ConsoleLogDir receives the guest console as <namespace>-<id>.log;
	// empty: console.log in the task's bundle (removed with the task).
	ConsoleLogDir string `toml:"console_log_dir"`
	// AgentTimeoutSeconds bounds boot until the agent answers, and the
	// image pull.
	AgentTimeoutSeconds int `toml:"agent_timeout_seconds"`

	// TEE is none | emulated | snp | tdx. Anything but none is a
	// confidential handler: the host shares no directory with the guest.
	TEE string `toml:"tee"`
	// GuestKernel is cloak (default: Cloak's kernel booting the verified
	// read-only root disk) or debian (Debian's cloud kernel with the same
	// userland in an initrd, ImageDir/debian/).
	GuestKernel string `toml:"guest_kernel"`
	// Kernel, Initrd and RootDisk default to the GuestKernel flavour's
	// files in ImageDir: vmlinuz, no initrd and root.img for cloak;
	// debian/vmlinuz, debian/initrd.img and no root disk for debian.
	Kernel   string `toml:"kernel"`
	Initrd   string `toml:"initrd"`
	RootDisk string `toml:"root_disk"`
	// Firmware is the guest firmware (OVMF) for snp and tdx; empty: QEMU's
	// default BIOS.
	Firmware string `toml:"firmware"`
	// SharedFS is none | virtio-fs: how host directories (other than the
	// small files CRI adds, which are copied) reach the guest. Only
	// allowed with tee = "none".
	SharedFS string `toml:"shared_fs"`
	// Virtiofsd is the virtio-fs daemon for SharedFS = "virtio-fs".
	Virtiofsd string `toml:"virtiofsd"`
	// EmulatedSNPDir holds the machine's test-only emulated SEV-SNP chain
	// (ARK, ASK, VCEK and its key) for tee = "emulated"; created on first
	// use. Its cert_chain.pem is what a KBS is told to trust
	// (kbs --snp-extra-root).
	EmulatedSNPDir string `toml:"emulated_snp_dir"`
	// EmulatedPlatform is what tee = "emulated" emulates: snp (default) or
	// tdx.
	EmulatedPlatform string `toml:"emulated_platform"`
	// EmulatedSNPFirmware, when set, makes the emulated SEV-SNP secure
	// processor report the real SNP MEASUREMENT (measurements/snp) of this
	// OVMF AMDSEV image with the VM's kernel, initrd, command line and vCPU
	// count, as a real SNP host running the same launch would, instead of
	// the emulated digest. QEMU does not load it: the emulated guest boots
	// without OVMF under TCG.
	EmulatedSNPFirmware string `toml:"emulated_snp_firmware"`
	// EmulatedSNPCPUType is the -cpu model that MEASUREMENT is computed for
	// (its signature is in each VMSA); default EPYC-Milan.
	EmulatedSNPCPUType string `toml:"emulated_snp_cpu_type"`
	// EmulatedTDXDir holds the machine's test-only emulated TDX chain (root
	// CA, PCK chain, QE key) and the collateral a KBS verifies it with
	// (collateral/ for --collateral-dir, root_ca.pem for --tdx-extra-root).
	EmulatedTDXDir string `toml:"emulated_tdx_dir"`
	// EmulatedHostAttack makes the shim act as a malicious host, to show
	// that the guest's own checks hold: "initdata-after-launch" binds the
	// pod's initdata into the launch, then hands the guest a changed one.
	// Only with tee = "emulated"; empty (the default): no attack.
	EmulatedHostAttack string `toml:"emulated_host_attack"`
	// VTPM attaches a software TPM (swtpm on the host) to every VM: for CI
	// and guests without a TEE; it proves nothing against the host.
	VTPM bool `toml:"vtpm"`
	// VTPMStateDir holds one TPM state per VM (removed with the VM).
	VTPMStateDir string `toml:"vtpm_state_dir"`
	// VTPMSetupConfig is swtpm_setup's --config (the local CA that signs
	// EK certificates); empty: the system's /etc/swtpm_setup.conf.
	VTPMSetupConfig string `toml:"vtpm_setup_config"`
	// AllowedAnnotations lists the pod annotations (short names: initdata,
	// vcpus, memory) a pod may use to change its VM; any other io.cloak.*
	// annotation is refused.
	AllowedAnnotations []string `toml:"allowed_annotations"`

	KBS      KBS      `toml:"kbs"`
	Registry Registry `toml:"registry"`
}

// TEE kinds of the tee key.
const (
	TEENone     = "none"
	TEEEmulated = "emulated"
	TEESNP      = "snp"
	TEETDX      = "tdx"
)

// Guest kernels of the guest_kernel key.
const (
	GuestKernelCloak  = "cloak"
	GuestKernelDebian = "debian"
)

// AttackInitdataAfterLaunch is the emulated_host_attack that changes the
// initdata after its digest went into the launch.
const AttackInitdataAfterLaunch = "initdata-after-launch"

// Shared file systems of the shared_fs key.
const (
	SharedFSNone     = "none"
	SharedFSVirtioFS = "virtio-fs"
)

// DefaultVirtiofsd is where distributions install virtiofsd.
const DefaultVirtiofsd = "/usr/libexec/virtiofsd"

// Default directories of the emulated SNP chain and the vTPM states.
const (
	DefaultEmulatedSNPDir = "/var/lib/cloak/emulated-snp"
	DefaultEmulatedTDXDir = "/var/lib/cloak/emulated-tdx"
	DefaultVTPMStateDir   = "/var/lib/cloak/vtpm"
)

// Annotation short names of allowed_annotations.
const (
	AnnotationInitdata = "initdata"
	AnnotationVCPUs    = "vcpus"
	AnnotationMemory   = "memory"
)

// KBS names the Key Broker Service a pod's guest attests to. The shim turns
// it into the pod's default initdata (CoCo's TOML: aa.toml with the URL and
// certificate), unless the pod brings its own initdata annotation.
type KBS struct {
	// URL is the KBS as the guest reaches it, e.g. https://10.88.0.1:8080.
	URL string `toml:"url"`
	// CAFile is the PEM certificate (or CA) the guest trusts for URL.
	CAFile string `toml:"ca_file"`
	// InitdataFile is a complete initdata document used instead of the one
	// built from URL and CAFile.
	InitdataFile string `toml:"initdata_file"`
}

// Registry configures how the guest reaches registries (guest pull).
type Registry struct {
	// Insecure lists registries (host[:port]) reached over plain HTTP.
	Insecure []string `toml:"insecure"`
	// Mirrors maps a registry as written in image references to the
	// endpoint the guest uses, e.g. "127.0.0.1:5000" = "http://10.0.2.2:5000"
	// (the host's loopback as a user-mode network guest sees it).
	Mirrors map[string]string `toml:"mirrors"`
}

// Load reads a configuration file; an empty path gives the defaults.
func Load(path string) (Config, error) {
	if path == "" {
		return Config{}.WithDefaults(), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("cloak config: %w (set the runtime option ConfigPath to an existing file)", err)
	}
	defer f.Close()
	raw := make([]byte, maxFileSize+1)
	n, err := io.ReadFull(f, raw)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("cloak config %s: %w", path, err)
	}
	if n > maxFileSize {
		return Config{}, fmt.Errorf("cloak config %s: larger than %d bytes", path, maxFileSize)
	}
	c, err := Parse(raw[:n])
	if err != nil {
		return Config{}, fmt.Errorf("cloak config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration document; unknown keys are errors (a typo
// must not silently fall back to a default), then applies defaults and
// checks values.
func Parse(doc []byte) (Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return Config{}, fmt.Errorf("unknown key: %s", sm.String())
		}
		return Config{}, err
	}
	c = c.WithDefaults()
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// WithDefaults fills unset keys with the documented defaults.
func (c Config) WithDefaults() Config {
	if c.ImageDir == "" {
		c.ImageDir = DefaultImageDir
	}
	if c.Accel == "" {
		c.Accel = string(qemu.AccelAuto)
	}
	if c.VCPUs == 0 {
		c.VCPUs = qemu.DefaultVCPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = qemu.DefaultMemoryMiB
	}
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir
	}
	if c.AgentTimeoutSeconds == 0 {
		c.AgentTimeoutSeconds = DefaultAgentTimeoutSeconds
	}
	if c.TEE == "" {
		c.TEE = TEENone
	}
	if c.GuestKernel == "" {
		c.GuestKernel = GuestKernelCloak
	}
	switch c.GuestKernel {
	case GuestKernelCloak:
		if c.Kernel == "" {
			c.Kernel = filepath.Join(c.ImageDir, "vmlinuz")
		}
		if c.RootDisk == "" {
			c.RootDisk = filepath.Join(c.ImageDir, "root.img")
		}
	case GuestKernelDebian:
		if c.Kernel == "" {
			c.Kernel = filepath.Join(c.ImageDir, "debian", "vmlinuz")
		}
		if c.Initrd == "" {
			c.Initrd = filepath.Join(c.ImageDir, "debian", "initrd.img")
		}
	}
	if c.SharedFS == "" {
		c.SharedFS = SharedFSNone
	}
	if c.Virtiofsd == "" {
		c.Virtiofsd = DefaultVirtiofsd
	}
	if c.EmulatedSNPDir == "" {
		c.EmulatedSNPDir = DefaultEmulatedSNPDir
	}
	if c.EmulatedPlatform == "" {
		c.EmulatedPlatform = TEESNP
	}
	if c.EmulatedTDXDir == "" {
		c.EmulatedTDXDir = DefaultEmulatedTDXDir
	}
	if c.EmulatedSNPFirmware != "" && c.EmulatedSNPCPUType == "" {
		c.EmulatedSNPCPUType = DefaultEmulatedSNPCPUType
	}
	if c.VTPMStateDir == "" {
		c.VTPMStateDir = DefaultVTPMStateDir
	}
	return c
}

// Confidential reports whether the handler runs confidential VMs: the host
// must not see or change what runs inside them.
func (c Config) Confidential() bool { return c.TEE != TEENone }

// AnnotationAllowed reports whether the pod annotation short name is in
// allowed_annotations.
func (c Config) AnnotationAllowed(name string) bool {
	for _, a := range c.AllowedAnnotations {
		if a == name {
			return true
		}
	}
	return false
}

func (c Config) validate() error {
	switch qemu.Accel(c.Accel) {
	case qemu.AccelAuto, qemu.AccelKVM, qemu.AccelTCG:
	default:
		return fmt.Errorf("accel %q: want auto, kvm or tcg", c.Accel)
	}
	if c.VCPUs < 1 || c.VCPUs > 256 {
		return fmt.Errorf("vcpus %d: want 1..256", c.VCPUs)
	}
	if c.MemoryMiB < 128 || c.MemoryMiB > 1<<20 {
		return fmt.Errorf("memory_mib %d: want 128..1048576", c.MemoryMiB)
	}
	if c.AgentTimeoutSeconds < 1 {
		return fmt.Errorf("agent_timeout_seconds %d: want > 0", c.AgentTimeoutSeconds)
	}
	switch c.TEE {
	case TEENone, TEEEmulated, TEESNP, TEETDX:
	default:
		return fmt.Errorf("tee %q: want none, emulated, snp or tdx", c.TEE)
	}
	switch c.GuestKernel {
	case GuestKernelCloak:
	case GuestKernelDebian:
		if c.RootDisk != "" {
			return fmt.Errorf("root_disk with guest_kernel %q: Debian's kernel boots the initrd (its root disk needs drivers it only has as modules); remove root_disk or set guest_kernel = %q", c.GuestKernel, GuestKernelCloak)
		}
	default:
		return fmt.Errorf("guest_kernel %q: want %q or %q", c.GuestKernel, GuestKernelCloak, GuestKernelDebian)
	}
	switch c.SharedFS {
	case SharedFSNone:
	case SharedFSVirtioFS:
		if c.Confidential() {
			return fmt.Errorf("shared_fs %q with tee %q: a confidential guest shares no host directory; set shared_fs = \"none\"", c.SharedFS, c.TEE)
		}
	default:
		return fmt.Errorf("shared_fs %q: want none or virtio-fs", c.SharedFS)
	}
	if c.EmulatedPlatform != TEESNP && c.EmulatedPlatform != TEETDX {
		return fmt.Errorf("emulated_platform %q: want snp or tdx", c.EmulatedPlatform)
	}
	if c.EmulatedSNPFirmware != "" && (c.TEE != TEEEmulated || c.EmulatedPlatform != TEESNP) {
		return fmt.Errorf("emulated_snp_firmware with tee %q, emulated_platform %q: it sets what the emulated SEV-SNP platform reports; use it with tee = \"emulated\" and emulated_platform = \"snp\", or remove it", c.TEE, c.EmulatedPlatform)
	}
	if c.EmulatedSNPCPUType != "" && !slices.Contains(snp.CPUTypes(), c.EmulatedSNPCPUType) {
		return fmt.Errorf("emulated_snp_cpu_type %q: want one of %s", c.EmulatedSNPCPUType, strings.Join(snp.CPUTypes(), ", "))
	}
	switch c.EmulatedHostAttack {
	case "":
	case AttackInitdataAfterLaunch:
		if c.TEE != TEEEmulated {
			return fmt.Errorf("emulated_host_attack %q with tee %q: host attacks are a test of emulated TEEs only; set tee = \"emulated\" or remove the key", c.EmulatedHostAttack, c.TEE)
		}
	default:
		return fmt.Errorf("emulated_host_attack %q: want %q or nothing", c.EmulatedHostAttack, AttackInitdataAfterLaunch)
	}
	if c.VTPM && (c.TEE == TEESNP || c.TEE == TEETDX) {
		return fmt.Errorf("vtpm with tee %q: a host-run TPM adds nothing to hardware evidence; set vtpm = false", c.TEE)
	}
	for _, a := range c.AllowedAnnotations {
		switch a {
		case AnnotationInitdata, AnnotationVCPUs, AnnotationMemory:
		default:
			return fmt.Errorf("allowed_annotations: unknown %q: want some of initdata, vcpus, memory", a)
		}
	}
	if c.KBS.InitdataFile != "" && (c.KBS.URL != "" || c.KBS.CAFile != "") {
		return errors.New("[kbs] initdata_file replaces url and ca_file: set one or the other")
	}
	if c.KBS.CAFile != "" && c.KBS.URL == "" {
		return errors.New("[kbs] ca_file without url: set url to the KBS as the guest reaches it")
	}
	if c.KBS.URL != "" {
		u, err := url.Parse(c.KBS.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("[kbs] url %q: want http(s)://HOST[:PORT]", c.KBS.URL)
		}
	}
	for _, d := range []struct{ key, dir string }{
		{"image_dir", c.ImageDir}, {"run_dir", c.RunDir}, {"console_log_dir", c.ConsoleLogDir},
		{"kernel", c.Kernel}, {"initrd", c.Initrd}, {"root_disk", c.RootDisk}, {"firmware", c.Firmware}, {"virtiofsd", c.Virtiofsd},
		{"[kbs] ca_file", c.KBS.CAFile}, {"[kbs] initdata_file", c.KBS.InitdataFile},
		{"emulated_snp_dir", c.EmulatedSNPDir}, {"emulated_snp_firmware", c.EmulatedSNPFirmware}, {"emulated_tdx_dir", c.EmulatedTDXDir}, {"vtpm_state_dir", c.VTPMStateDir}, {"vtpm_setup_config", c.VTPMSetupConfig},
	} {
		if d.dir != "" && !filepath.IsAbs(d.dir) {
			return fmt.Errorf("%s %q: want an absolute path", d.key, d.dir)
		}
	}
	return nil
}

// AgentTimeout is AgentTimeoutSeconds as a duration.
func (c Config) AgentTimeout() time.Duration {
	return time.Duration(c.AgentTimeoutSeconds) * time.Second
}

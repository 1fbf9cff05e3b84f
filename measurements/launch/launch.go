// Package launch turns a description of a confidential launch (TEE, firmware,
// kernel, initrd, command line, vCPUs, CPU model, memory) into the reference
// values a KBS compares evidence with, named as the KBS names them
// (snp_launch_measurement, tdx_mr_td, tdx_rtmr1, tdx_rtmr2). It reads the
// files and calls measurements/snp or measurements/tdx; cloak-image measure
// and the image build both use it, so humans and the build compute the same.
package launch

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cloak-containers/cloak/measurements/snp"
	"github.com/cloak-containers/cloak/measurements/tdx"
)

// TEE names, as kbs-types spells them.
const (
	TEESNP = "snp"
	TEETDX = "tdx"
)

// Reference-value names the KBS and its default policy use.
const (
	SNPLaunchMeasurement = "snp_launch_measurement"
	TDXMRTD              = "tdx_mr_td"
	TDXRTMR1             = "tdx_rtmr1"
	TDXRTMR2             = "tdx_rtmr2"
)

// Config describes one launch. Paths name files; an empty Initrd means QEMU
// runs without -initrd, an empty Cmdline without -append (the same values as
// -append "").
type Config struct {
	TEE      string `json:"tee"`
	Firmware string `json:"-"`
	Kernel   string `json:"-"`
	Initrd   string `json:"-"`
	Cmdline  string `json:"cmdline"`
	// SNP only.
	VCPUs         int    `json:"vcpus,omitempty"`
	CPUType       string `json:"cpu_type,omitempty"`
	CPUSignature  uint32 `json:"cpu_signature,omitempty"` // instead of CPUType, for -cpu host
	GuestFeatures uint64 `json:"guest_features,omitempty"`
	// TDX only: guest RAM in bytes, and the pre-2025.05 kernel loading.
	Memory            uint64 `json:"memory,omitempty"`
	LegacySetupHeader bool   `json:"legacy_setup_header,omitempty"`
}

// Value is one reference value.
type Value struct {
	Name  string `json:"name"`
	Value string `json:"value"` // lowercase hex
}

// Result is what Measure computed, with the digests of the files it read so
// the output says exactly which artifacts the values belong to.
type Result struct {
	Config         Config  `json:"config"`
	FirmwareSHA256 string  `json:"firmware_sha256"`
	KernelSHA256   string  `json:"kernel_sha256"`
	InitrdSHA256   string  `json:"initrd_sha256,omitempty"`
	Values         []Value `json:"values"`
	// NotComputed says which registers the KBS must learn elsewhere.
	NotComputed []string `json:"not_computed,omitempty"`
}

// ErrConfig marks a launch description that is incomplete or contradictory.
var ErrConfig = errors.New("invalid launch configuration")

// Measure reads the files of c and computes its reference values.
func Measure(c Config) (*Result, error) {
	if c.Firmware == "" || c.Kernel == "" {
		return nil, fmt.Errorf("%w: a firmware and a kernel are required", ErrConfig)
	}
	fw, err := os.ReadFile(c.Firmware)
	if err != nil {
		return nil, fmt.Errorf("read firmware: %w", err)
	}
	kernel, err := os.ReadFile(c.Kernel)
	if err != nil {
		return nil, fmt.Errorf("read kernel: %w", err)
	}
	var initrd []byte
	if c.Initrd != "" {
		if initrd, err = os.ReadFile(c.Initrd); err != nil {
			return nil, fmt.Errorf("read initrd: %w", err)
		}
	}
	return MeasureBytes(c, fw, kernel, initrd)
}

// MeasureBytes is Measure for callers that hold the artifacts in memory;
// c's paths are ignored.
func MeasureBytes(c Config, fw, kernel, initrd []byte) (*Result, error) {
	r := &Result{Config: c, FirmwareSHA256: sha256Hex(fw), KernelSHA256: sha256Hex(kernel)}
	if initrd != nil {
		r.InitrdSHA256 = sha256Hex(initrd)
	}
	switch c.TEE {
	case TEESNP:
		if c.Memory != 0 || c.LegacySetupHeader {
			return nil, fmt.Errorf("%w: memory and the legacy setup header are TDX settings; the SNP measurement does not depend on them", ErrConfig)
		}
		if c.CPUType == "" && c.CPUSignature == 0 {
			return nil, fmt.Errorf("%w: SNP needs the CPU model (%s), or for -cpu host the host's CPU signature: it is in each VMSA", ErrConfig, strings.Join(snp.CPUTypes(), ", "))
		}
		m, err := snp.Measure(snp.Inputs{Firmware: fw, Kernel: kernel, Initrd: initrd, Cmdline: c.Cmdline,
			VCPUs: c.VCPUs, CPU: snp.CPUType(c.CPUType), CPUSignature: c.CPUSignature, GuestFeatures: c.GuestFeatures})
		if err != nil {
			return nil, err
		}
		r.Values = []Value{{SNPLaunchMeasurement, hex.EncodeToString(m)}}
	case TEETDX:
		if c.VCPUs != 0 || c.CPUType != "" || c.CPUSignature != 0 || c.GuestFeatures != 0 {
			return nil, fmt.Errorf("%w: vCPUs, CPU model and guest features are SNP settings; MRTD/RTMR1/RTMR2 do not depend on them", ErrConfig)
		}
		regs, err := tdx.Measure(tdx.Inputs{Firmware: fw, Kernel: kernel, Initrd: initrd, Cmdline: c.Cmdline,
			Memory: c.Memory, LegacySetupHeader: c.LegacySetupHeader})
		if err != nil {
			return nil, err
		}
		r.Values = []Value{
			{TDXMRTD, hex.EncodeToString(regs.MRTD[:])},
			{TDXRTMR1, hex.EncodeToString(regs.RTMR1[:])},
			{TDXRTMR2, hex.EncodeToString(regs.RTMR2[:])},
		}
		r.NotComputed = []string{"tdx_rtmr0: " + tdx.RTMR0Reason, "tdx_rtmr3: extended at run time by the guest, not at launch"}
	default:
		return nil, fmt.Errorf("%w: TEE %q, want %s or %s", ErrConfig, c.TEE, TEESNP, TEETDX)
	}
	return r, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ParseMemory reads a QEMU -m style size: a number of bytes with an
// optional K, M, G or T suffix (powers of 1024); a bare number is MiB, as
// QEMU reads it.
func ParseMemory(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	shift := 20
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			shift, t = 10, t[:n-1]
		case 'M':
			shift, t = 20, t[:n-1]
		case 'G':
			shift, t = 30, t[:n-1]
		case 'T':
			shift, t = 40, t[:n-1]
		case 'B':
			shift, t = 0, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 || v > (1<<50)>>shift {
		return 0, fmt.Errorf("%w: memory %q: want a size such as 2G or 2048M", ErrConfig, s)
	}
	return v << shift, nil
}

// Package snp computes the SEV-SNP launch MEASUREMENT that the AMD secure
// processor reports for a QEMU guest booted directly (-kernel) from an OVMF
// AMDSEV build with kernel-hashes=on.
//
// The computation is three steps, each testable on its own:
//
//	Inputs -> Pages (the SNP_LAUNCH_UPDATE calls QEMU makes, in order) -> Digest
//
// Pages are: every page of the firmware image (mapped to end at 4 GiB), then
// OVMF's SEV metadata sections in firmware order (SEC_MEM and SVSM_CAA as zero
// pages, SECRETS, CPUID, and KERNEL_HASHES holding the SEV hashes table of
// kernel, initrd and command line), then one VMSA page per vCPU. The digest
// chains each page's PAGE_INFO (SEV-SNP firmware ABI, "Launch Digest
// Calculation") through SHA-384.
package snp

import (
	"crypto/sha512"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/go-sev-guest/abi"
)

// CPUType names a QEMU -cpu model. It decides only the CPUID signature
// (family, model, stepping) that QEMU puts into RDX of every VMSA.
type CPUType string

// The CPU models Cloak's cloak-snp handler can be configured with.
const (
	EPYCv4    CPUType = "EPYC-v4"
	EPYCMilan CPUType = "EPYC-Milan"
	EPYCGenoa CPUType = "EPYC-Genoa"
)

// fms is family, model, stepping as QEMU's builtin_x86_defs declare them.
var cpuFMS = map[CPUType][3]byte{
	EPYCv4:    {23, 1, 2},
	EPYCMilan: {25, 1, 1},
	EPYCGenoa: {25, 17, 0},
}

// CPUTypes lists the supported CPU models, sorted.
func CPUTypes() []string {
	var s []string
	for t := range cpuFMS {
		s = append(s, string(t))
	}
	sort.Strings(s)
	return s
}

// Signature returns the CPUID Fn0000_0001_EAX value of the model.
func (t CPUType) Signature() (uint32, error) {
	f, ok := cpuFMS[t]
	if !ok {
		return 0, fmt.Errorf("unknown CPU type %q: use one of %s", t, strings.Join(CPUTypes(), ", "))
	}
	return abi.FmsToCpuid1Eax(f[0], f[1], f[2]), nil
}

// DefaultGuestFeatures is SEV_FEATURES with only SNPActive set, what QEMU's
// sev-snp-guest puts in the VMSA unless told otherwise.
const DefaultGuestFeatures = 0x1

// MaxVCPUs bounds the vCPU count: one VMSA page is measured per vCPU, and
// QEMU's q35 machine refuses more than this.
const MaxVCPUs = 4096

// Inputs is everything the SEV-SNP launch measurement depends on.
type Inputs struct {
	// Firmware is the OVMF AMDSEV image passed as -bios, byte for byte.
	Firmware []byte
	// Kernel is the bzImage passed as -kernel, hashed as is (QEMU does not
	// patch its setup header under SEV). Nil means no -kernel: the
	// KERNEL_HASHES page is then measured as a zero page.
	Kernel []byte
	// Initrd is the -initrd file; nil or empty means no -initrd (both hash
	// as SHA-256 of nothing).
	Initrd []byte
	// Cmdline is the -append string; QEMU hashes it with a trailing NUL, so
	// no -append and -append "" are the same.
	Cmdline string
	// VCPUs is the number of vCPUs QEMU creates at launch (-smp).
	VCPUs int
	// CPU is the -cpu model. With -cpu host the signature is the host's:
	// leave CPU empty and set CPUSignature instead.
	CPU CPUType
	// CPUSignature, when not zero, is the CPUID Fn0000_0001_EAX value QEMU
	// puts in each VMSA (abi.FmsToCpuid1Eax of the host's family, model
	// and stepping for -cpu host), instead of CPU's.
	CPUSignature uint32
	// GuestFeatures is the VMSA SEV_FEATURES value (sev-snp-guest's
	// guest features; DefaultGuestFeatures unless configured).
	GuestFeatures uint64
}

func (in *Inputs) signature() uint32 {
	if in.CPUSignature != 0 {
		return in.CPUSignature
	}
	s, _ := in.CPU.Signature()
	return s
}

// ErrInput marks inputs that cannot describe a launch; errors.Is tells a
// caller's mistake from a firmware it cannot read.
var ErrInput = errors.New("invalid SEV-SNP measurement input")

func (in *Inputs) validate() error {
	if in.VCPUs < 1 || in.VCPUs > MaxVCPUs {
		return fmt.Errorf("%w: %d vCPUs, want 1..%d", ErrInput, in.VCPUs, MaxVCPUs)
	}
	if in.CPUSignature != 0 {
		if in.CPU != "" {
			return fmt.Errorf("%w: both a CPU model (%s) and a CPU signature (%#x): give one", ErrInput, in.CPU, in.CPUSignature)
		}
	} else if _, err := in.CPU.Signature(); err != nil {
		return fmt.Errorf("%w: %v", ErrInput, err)
	}
	if in.Kernel == nil && (len(in.Initrd) > 0 || in.Cmdline != "") {
		return fmt.Errorf("%w: an initrd or command line needs a kernel (QEMU refuses -initrd/-append without -kernel)", ErrInput)
	}
	if len(in.Firmware) == 0 || len(in.Firmware)%pageSize != 0 {
		return fmt.Errorf("%w: firmware is %d bytes, want a non-empty multiple of 4096", ErrInput, len(in.Firmware))
	}
	if len(in.Firmware) > maxFirmware {
		return fmt.Errorf("%w: firmware is %d bytes, more than the %d below 4 GiB QEMU can map", ErrInput, len(in.Firmware), maxFirmware)
	}
	return nil
}

// maxFirmware bounds the image: it is mapped to end at 4 GiB, and QEMU's
// pc.bios region holds at most 16 MiB.
const maxFirmware = 16 << 20

// Measure returns the 48-byte launch MEASUREMENT for in.
func Measure(in Inputs) ([]byte, error) {
	pages, err := Pages(in)
	if err != nil {
		return nil, err
	}
	d := Digest(pages)
	return d[:], nil
}

// MeasureVCPURange returns the measurement for every vCPU count from 1 to
// max (index n-1 holds n vCPUs), in.VCPUs ignored. The firmware pages are
// hashed once and each further vCPU adds one AP VMSA to the chain, so a
// build can record every count a handler may launch for the cost of one.
func MeasureVCPURange(in Inputs, max int) ([][]byte, error) {
	if max < 1 || max > MaxVCPUs {
		return nil, fmt.Errorf("%w: vCPU range 1..%d, want an upper bound in 1..%d", ErrInput, max, MaxVCPUs)
	}
	in.VCPUs = 2
	pages, err := Pages(in)
	if err != nil {
		return nil, err
	}
	ap := pages[len(pages)-1]
	d := Digest(pages[:len(pages)-1])
	out := make([][]byte, 0, max)
	for n := 1; ; n++ {
		out = append(out, append([]byte(nil), d[:]...))
		if n == max {
			return out, nil
		}
		d = sha512.Sum384(PageInfo(d, ap))
	}
}

package tdx

import (
	"errors"
	"fmt"
	"math"
)

// Inputs is everything Cloak computes the TDX registers from.
type Inputs struct {
	// Firmware is the OVMF IntelTdx image (-bios), byte for byte.
	Firmware []byte
	// Kernel is the -kernel bzImage (an EFI stub PE image).
	Kernel []byte
	// Initrd is the -initrd file; nil or empty means none.
	Initrd []byte
	// Cmdline is the -append string ("" = no -append).
	Cmdline string
	// Memory is the guest RAM in bytes (-m). RTMR1 depends on it only with
	// LegacySetupHeader.
	Memory uint64
	// LegacySetupHeader measures the kernel with QEMU's setup-header
	// patches, as OVMF before 2025.05 (or QEMU before 10.0) loads it. Debian's
	// OVMF 2026.08 with QEMU 10.1+ loads the unpatched "etc/boot/kernel".
	LegacySetupHeader bool
}

// Registers are the computed values; RTMR0 and RTMR3 are not computed.
type Registers struct {
	MRTD, RTMR1, RTMR2 [48]byte
	// RTMR1Events and RTMR2Events are what was extended, in order.
	RTMR1Events, RTMR2Events []Event
}

// ErrInput marks inputs that cannot describe a TDX launch.
var ErrInput = errors.New("invalid TDX measurement input")

// Measure computes MRTD, RTMR1 and RTMR2.
func Measure(in Inputs) (*Registers, error) {
	if len(in.Kernel) == 0 {
		return nil, fmt.Errorf("%w: no kernel; Cloak boots TDX guests with -kernel", ErrInput)
	}
	if len(in.Initrd) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: initrd of %d bytes, QEMU's limit is 4 GiB", ErrInput, len(in.Initrd))
	}
	if in.LegacySetupHeader && in.Memory == 0 {
		return nil, fmt.Errorf("%w: the legacy setup-header measurement needs the memory size", ErrInput)
	}
	mrtd, err := MRTD(in.Firmware)
	if err != nil {
		return nil, err
	}
	kernel := in.Kernel
	if in.LegacySetupHeader {
		if kernel, err = PatchSetupHeader(in.Kernel, uint32(len(in.Initrd)), in.Memory); err != nil {
			return nil, err
		}
	}
	auth, err := AuthenticodeSHA384(kernel)
	if err != nil {
		return nil, err
	}
	r := &Registers{MRTD: mrtd, RTMR1Events: RTMR1Events(auth), RTMR2Events: RTMR2Events(in.Cmdline, in.Initrd)}
	r.RTMR1 = Extend(r.RTMR1Events)
	r.RTMR2 = Extend(r.RTMR2Events)
	return r, nil
}

package tdx

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
)

// Event is one digest extended into an RTMR, with what it is, so the list
// can be compared line by line with a TD's CCEL event log.
type Event struct {
	What   string
	Digest [48]byte
}

// Extend replays events into a register that starts at zero:
// RTMR = SHA-384(RTMR || digest) per event (TDG.MR.RTMR.EXTEND).
func Extend(events []Event) [48]byte {
	var r [48]byte
	for _, e := range events {
		buf := append(r[:], e.Digest[:]...)
		r = sha512.Sum384(buf)
	}
	return r
}

func action(s string) Event {
	return Event{What: "EV_EFI_ACTION " + s, Digest: sha512.Sum384([]byte(s))}
}

// separator is EV_SEPARATOR's digest over a 4-byte zero.
var separator = Event{What: "EV_SEPARATOR", Digest: sha512.Sum384(make([]byte, 4))}

// RTMR1Events lists what TDVF extends into RTMR1 (PCRs 2-6) on a direct
// kernel boot: the kernel image's Authenticode digest when it is loaded, the
// ReadyToBoot action and separator, and the two ExitBootServices actions.
func RTMR1Events(kernelAuthenticode [48]byte) []Event {
	return []Event{
		{What: "EV_EFI_BOOT_SERVICES_APPLICATION kernel (Authenticode SHA-384)", Digest: kernelAuthenticode},
		action("Calling EFI Application from Boot Option"),
		separator,
		action("Exit Boot Services Invocation"),
		action("Exit Boot Services Returned with Success"),
	}
}

// LoadOptions returns the UEFI load options OVMF hands the kernel for a
// QEMU -append string: the command line, " initrd=initrd" when QEMU was
// given an initrd, as CHAR16 (each byte widened, as UnicodeSPrintAsciiFormat
// does) with a terminating NUL. QEMU without -append passes an empty string,
// so the options are then a lone NUL.
func LoadOptions(cmdline string, haveInitrd bool) []byte {
	s := cmdline
	if haveInitrd {
		s += " initrd=initrd"
	}
	b := make([]byte, 0, 2*len(s)+2)
	for i := 0; i < len(s); i++ {
		b = binary.LittleEndian.AppendUint16(b, uint16(s[i]))
	}
	return append(b, 0, 0)
}

// RTMR2Events lists what the kernel's EFI stub extends into RTMR2 (PCR 9):
// its load options, then the initrd it loaded through OVMF's
// LINUX_EFI_INITRD_MEDIA device path (nothing when QEMU had no -initrd).
func RTMR2Events(cmdline string, initrd []byte) []Event {
	ev := []Event{{What: "EV_EVENT_TAG LOADED_IMAGE::LoadOptions", Digest: sha512.Sum384(LoadOptions(cmdline, len(initrd) > 0))}}
	if len(initrd) > 0 {
		ev = append(ev, Event{What: "EV_EVENT_TAG Linux initrd", Digest: sha512.Sum384(initrd)})
	}
	return ev
}

// acpiDataSize is what QEMU's q35 machine reserves below 4 GiB for ACPI
// (0x20000 + 0x8000); it lowers the highest initrd address.
const acpiDataSize = 0x28000

// ErrKernel marks a kernel QEMU could not load or patch.
var ErrKernel = errors.New("kernel cannot be loaded")

// PatchSetupHeader returns the kernel as QEMU's x86_load_linux leaves it in
// the fw_cfg "kernel" blob: the boot protocol setup header patched with the
// loader type, heap end, command line address and initrd address/size. Only
// firmware that loads the kernel from that blob (OVMF before 2025.05, or
// QEMU before 10.0, which lacks the unpatched "etc/boot/kernel") measures
// this; the initrd address depends on the memory size.
func PatchSetupHeader(kernel []byte, initrdSize uint32, memory uint64) ([]byte, error) {
	if len(kernel) < 0x1000 {
		return nil, fmt.Errorf("%w: %d bytes, too short for a bzImage", ErrKernel, len(kernel))
	}
	kd := append([]byte(nil), kernel...)
	protocol := uint16(0)
	if string(kd[0x202:0x206]) == "HdrS" {
		protocol = binary.LittleEndian.Uint16(kd[0x206:])
	}
	realAddr, cmdlineAddr := uint32(0x10000), uint32(0x20000)
	if protocol < 0x200 || kd[0x211]&0x01 == 0 {
		realAddr, cmdlineAddr = 0x90000, 0x9a000
	}
	if protocol >= 0x200 {
		kd[0x210] = 0xb0 // type_of_loader: QEMU
	}
	if protocol >= 0x201 {
		kd[0x211] |= 0x80 // CAN_USE_HEAP
		binary.LittleEndian.PutUint32(kd[0x224:], cmdlineAddr-realAddr-0x200)
	}
	if protocol >= 0x202 {
		binary.LittleEndian.PutUint32(kd[0x228:], cmdlineAddr)
	} else {
		binary.LittleEndian.PutUint16(kd[0x20:], 0xa33f)
		binary.LittleEndian.PutUint16(kd[0x22:], uint16(cmdlineAddr-realAddr))
	}
	if initrdSize == 0 {
		return kd, nil
	}
	if protocol < 0x200 {
		return nil, fmt.Errorf("%w: boot protocol %#x is too old for an initrd", ErrKernel, protocol)
	}
	initrdMax := uint32(0x37ffffff)
	switch {
	case protocol >= 0x20c:
		if binary.LittleEndian.Uint16(kd[0x236:])&0x40 != 0 { // XLF_CAN_BE_LOADED_ABOVE_4G
			initrdMax = 0xffffffff
		}
	case protocol >= 0x203:
		if m := binary.LittleEndian.Uint32(kd[0x22c:]); m != 0 {
			initrdMax = m
		}
	}
	// q35: below 4 GiB is all of RAM up to 2.75 GiB, else 2 GiB.
	lowmem := uint64(0xb0000000)
	if memory >= 0xb0000000 {
		lowmem = 0x80000000
	}
	below4g := min(memory, lowmem)
	if below4g <= acpiDataSize {
		return nil, fmt.Errorf("%w: %d bytes of memory leave no room for an initrd", ErrKernel, memory)
	}
	if uint64(initrdMax) >= below4g-acpiDataSize {
		initrdMax = uint32(below4g - acpiDataSize - 1)
	}
	if initrdSize >= initrdMax {
		return nil, fmt.Errorf("%w: initrd of %d bytes does not fit below %#x", ErrKernel, initrdSize, initrdMax)
	}
	binary.LittleEndian.PutUint32(kd[0x218:], (initrdMax-initrdSize)&^4095)
	binary.LittleEndian.PutUint32(kd[0x21c:], initrdSize)
	return kd, nil
}

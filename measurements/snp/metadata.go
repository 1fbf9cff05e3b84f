package snp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cloak-containers/cloak/measurements/ovmf"
)

// SectionType is an OVMF SEV metadata section type
// (OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
type SectionType uint32

// Section types QEMU knows how to launch.
const (
	SectionSECMem       SectionType = 1
	SectionSecrets      SectionType = 2
	SectionCPUID        SectionType = 3
	SectionSVSMCAA      SectionType = 4
	SectionKernelHashes SectionType = 0x10
)

func (t SectionType) String() string {
	switch t {
	case SectionSECMem:
		return "SEC_MEM"
	case SectionSecrets:
		return "SECRETS"
	case SectionCPUID:
		return "CPUID"
	case SectionSVSMCAA:
		return "SVSM_CAA"
	case SectionKernelHashes:
		return "KERNEL_HASHES"
	}
	return fmt.Sprintf("type %#x", uint32(t))
}

// Section is one OVMF SEV metadata section descriptor.
type Section struct {
	GPA  uint32
	Size uint32
	Type SectionType
}

// Firmware is what the measurement needs from an OVMF AMDSEV image.
type Firmware struct {
	// GPA is where the image starts: QEMU maps -bios to end at 4 GiB.
	GPA uint64
	// Sections are the SEV metadata sections, in firmware order (the order
	// QEMU launches them).
	Sections []Section
	// ResetEIP is the AP reset vector from the SEV-ES reset block.
	ResetEIP uint32
	// HashesTableGPA is where QEMU writes the SEV hashes table.
	HashesTableGPA uint32
}

const (
	pageSize           = 4096
	metadataHdrSize    = 16 // "ASEV", size, version, count
	sectionDescSize    = 12
	maxMetadataSecs    = 64
	fourGiB            = 1 << 32
	sevMetadataMagic   = "ASEV"
	sevMetadataVersion = 1
)

// ErrFirmware marks a firmware image that is not a usable OVMF AMDSEV build.
var ErrFirmware = errors.New("not a usable OVMF AMDSEV (SEV-SNP) firmware image")

// ParseFirmware reads the footer table and SEV metadata of an OVMF image.
func ParseFirmware(fw []byte) (*Firmware, error) {
	t, err := ovmf.ParseTable(fw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFirmware, err)
	}
	f := &Firmware{GPA: fourGiB - uint64(len(fw))}
	if f.ResetEIP, err = t.Uint32(ovmf.SEVESResetBlockGUID); err != nil {
		return nil, fmt.Errorf("%w: SEV-ES reset block: %v (an OVMF built without SEV-ES support)", ErrFirmware, err)
	}
	off, err := t.Uint32(ovmf.SEVMetadataGUID)
	if err != nil {
		return nil, fmt.Errorf("%w: SEV metadata: %v (use the AmdSev build, OVMF.amdsev.fd)", ErrFirmware, err)
	}
	if f.Sections, err = parseSections(fw, off); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFirmware, err)
	}
	if g, err := t.Uint32(ovmf.SEVHashTableRVGUID); err == nil {
		f.HashesTableGPA = g
	}
	return f, nil
}

func parseSections(fw []byte, offsetFromEnd uint32) ([]Section, error) {
	if uint64(offsetFromEnd) > uint64(len(fw)) || offsetFromEnd < metadataHdrSize {
		return nil, fmt.Errorf("SEV metadata offset %#x outside the %d-byte image", offsetFromEnd, len(fw))
	}
	start := len(fw) - int(offsetFromEnd)
	hdr := fw[start : start+metadataHdrSize]
	if string(hdr[:4]) != sevMetadataMagic {
		return nil, fmt.Errorf("SEV metadata signature %q, want %q", hdr[:4], sevMetadataMagic)
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != sevMetadataVersion {
		return nil, fmt.Errorf("SEV metadata version %d, want %d", v, sevMetadataVersion)
	}
	n := binary.LittleEndian.Uint32(hdr[12:])
	if n > maxMetadataSecs {
		return nil, fmt.Errorf("SEV metadata declares %d sections, more than %d", n, maxMetadataSecs)
	}
	body := fw[start+metadataHdrSize:]
	if uint64(n)*sectionDescSize > uint64(len(body)) {
		return nil, fmt.Errorf("SEV metadata declares %d sections past the end of the image", n)
	}
	secs := make([]Section, n)
	for i := range secs {
		d := body[i*sectionDescSize:]
		secs[i] = Section{
			GPA:  binary.LittleEndian.Uint32(d),
			Size: binary.LittleEndian.Uint32(d[4:]),
			Type: SectionType(binary.LittleEndian.Uint32(d[8:])),
		}
		// A zero-size section (the IntelTdx build's SVSM_CAA) measures nothing.
		if secs[i].GPA%pageSize != 0 || secs[i].Size%pageSize != 0 {
			return nil, fmt.Errorf("SEV metadata section %d (%s) at %#x size %#x is not page-aligned", i, secs[i].Type, secs[i].GPA, secs[i].Size)
		}
	}
	return secs, nil
}

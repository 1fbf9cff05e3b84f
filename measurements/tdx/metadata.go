package tdx

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cloak-containers/cloak/measurements/ovmf"
)

// SectionType is a TDVF metadata section type ("Intel TDX Virtual Firmware
// Design Guide", section 11).
type SectionType uint32

// Section types in TDVF metadata.
const (
	SectionBFV          SectionType = 0 // boot firmware volume (code)
	SectionCFV          SectionType = 1 // configuration firmware volume (variables)
	SectionTDHOB        SectionType = 2
	SectionTempMem      SectionType = 3
	SectionPermMem      SectionType = 4
	SectionPayload      SectionType = 5
	SectionPayloadParam SectionType = 6
)

// Section attributes.
const (
	AttrMRExtend uint32 = 1 << 0 // the pages are extended into MRTD
	AttrPageAug  uint32 = 1 << 1 // the pages are added lazily (TDH.MEM.PAGE.AUG), not measured
)

// Section is one TDVF metadata section descriptor.
type Section struct {
	DataOffset    uint32 // where its bytes start in the firmware file
	RawDataSize   uint32
	MemoryAddress uint64 // GPA
	MemorySize    uint64
	Type          SectionType
	Attributes    uint32
}

// ErrFirmware marks a firmware image that is not a usable TDVF (OVMF
// IntelTdx) build.
var ErrFirmware = errors.New("not a usable TDX firmware (TDVF) image")

const (
	pageSize        = 4096
	tdvfHeaderSize  = 16 // "TDVF", length, version, count
	tdvfSectionSize = 32
	maxTDVFSections = 64
)

// ParseFirmware reads the TDVF metadata of an OVMF IntelTdx image: the
// sections QEMU adds to the TD, in the order it adds them.
func ParseFirmware(fw []byte) ([]Section, error) {
	t, err := ovmf.ParseTable(fw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFirmware, err)
	}
	off, err := t.Uint32(ovmf.TDXMetadataGUID)
	if err != nil {
		return nil, fmt.Errorf("%w: TDX metadata: %v (use the IntelTdx build, OVMF.inteltdx.fd)", ErrFirmware, err)
	}
	if uint64(off) > uint64(len(fw)) || off < tdvfHeaderSize {
		return nil, fmt.Errorf("%w: TDVF metadata offset %#x outside the %d-byte image", ErrFirmware, off, len(fw))
	}
	start := len(fw) - int(off)
	hdr := fw[start : start+tdvfHeaderSize]
	if string(hdr[:4]) != "TDVF" {
		return nil, fmt.Errorf("%w: TDVF metadata signature %q, want \"TDVF\"", ErrFirmware, hdr[:4])
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != 1 {
		return nil, fmt.Errorf("%w: TDVF metadata version %d, want 1", ErrFirmware, v)
	}
	n := binary.LittleEndian.Uint32(hdr[12:])
	body := fw[start+tdvfHeaderSize:]
	if n == 0 || n > maxTDVFSections || uint64(n)*tdvfSectionSize > uint64(len(body)) {
		return nil, fmt.Errorf("%w: TDVF metadata declares %d sections (at most %d, inside the image)", ErrFirmware, n, maxTDVFSections)
	}
	secs := make([]Section, n)
	for i := range secs {
		d := body[i*tdvfSectionSize:]
		s := Section{
			DataOffset:    binary.LittleEndian.Uint32(d),
			RawDataSize:   binary.LittleEndian.Uint32(d[4:]),
			MemoryAddress: binary.LittleEndian.Uint64(d[8:]),
			MemorySize:    binary.LittleEndian.Uint64(d[16:]),
			Type:          SectionType(binary.LittleEndian.Uint32(d[24:])),
			Attributes:    binary.LittleEndian.Uint32(d[28:]),
		}
		if s.MemoryAddress%pageSize != 0 || s.MemorySize%pageSize != 0 {
			return nil, fmt.Errorf("%w: TDVF section %d at %#x size %#x is not page-aligned", ErrFirmware, i, s.MemoryAddress, s.MemorySize)
		}
		if s.MemorySize > 1<<32 {
			return nil, fmt.Errorf("%w: TDVF section %d claims %#x bytes", ErrFirmware, i, s.MemorySize)
		}
		if s.Attributes&AttrMRExtend != 0 {
			// Measured bytes come from the file: they must all be there.
			if uint64(s.RawDataSize) != s.MemorySize || uint64(s.DataOffset)+s.MemorySize > uint64(len(fw)) {
				return nil, fmt.Errorf("%w: measured TDVF section %d (type %d) has %#x bytes at file offset %#x for %#x bytes of memory in a %#x-byte image",
					ErrFirmware, i, s.Type, s.RawDataSize, s.DataOffset, s.MemorySize, len(fw))
			}
		}
		secs[i] = s
	}
	return secs, nil
}

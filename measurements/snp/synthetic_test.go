package snp

import (
	"encoding/binary"

	"github.com/cloak-containers/cloak/internal/kat"
	"github.com/cloak-containers/cloak/measurements/ovmf"
)

// syntheticSections mirror the layout of Debian's OVMF.amdsev.fd 2026.08,
// including its two SEC_MEM ranges around the secrets and a KERNEL_HASHES
// section that is not last.
var syntheticSections = []Section{
	{0x800000, 0x9000, SectionSECMem},
	{0x80d000, 0x1000, SectionSecrets},
	{0x80e000, 0x1000, SectionCPUID},
	{0x80f000, 0x1000, SectionSVSMCAA},
	{0x811000, 0x2000, SectionSECMem},
	{0x810000, 0x1000, SectionKernelHashes},
}

const (
	syntheticSize      = 64 * pageSize
	syntheticResetEIP  = 0x80b004
	syntheticHashesGPA = 0x810c00
)

// syntheticFirmware builds a 256 KiB OVMF-like image: pseudo-random bytes
// with an SEV metadata block and a footer table (SEV metadata offset, SEV-ES
// reset block, SEV hashes table) laid out as edk2's ResetVectorVtf0.asm does.
// It is what the always-running known answers are computed over.
func syntheticFirmware(sections []Section) []byte {
	fw := kat.Stream("firmware", syntheticSize)
	// SEV metadata at 0x1000 bytes from the end.
	const metaOff = 0x1000
	m := fw[len(fw)-metaOff:]
	copy(m, "ASEV")
	binary.LittleEndian.PutUint32(m[4:], uint32(metadataHdrSize+sectionDescSize*len(sections)))
	binary.LittleEndian.PutUint32(m[8:], 1)
	binary.LittleEndian.PutUint32(m[12:], uint32(len(sections)))
	for i, s := range sections {
		d := m[metadataHdrSize+i*sectionDescSize:]
		binary.LittleEndian.PutUint32(d, s.GPA)
		binary.LittleEndian.PutUint32(d[4:], s.Size)
		binary.LittleEndian.PutUint32(d[8:], uint32(s.Type))
	}
	u32 := func(vs ...uint32) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint32(b, v)
		}
		return b
	}
	kat.PutFooterTable(fw,
		kat.Entry{GUID: ovmf.SEVMetadataGUID, Data: u32(metaOff)},
		kat.Entry{GUID: ovmf.SEVESResetBlockGUID, Data: u32(syntheticResetEIP)},
		kat.Entry{GUID: ovmf.SEVHashTableRVGUID, Data: u32(syntheticHashesGPA, 0x400)})
	return fw
}

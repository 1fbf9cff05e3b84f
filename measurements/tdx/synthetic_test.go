package tdx

import (
	"encoding/binary"

	"github.com/cloak-containers/cloak/internal/kat"
	"github.com/cloak-containers/cloak/measurements/ovmf"
)

// syntheticSections mirror Debian's OVMF.inteltdx.ms.fd 2026.08 (BFV
// measured, CFV not, TD HOB and temporary memory added only), scaled down.
var syntheticSections = []Section{
	{DataOffset: 0x8000, RawDataSize: 0x18000, MemoryAddress: 0xfffe8000, MemorySize: 0x18000, Type: SectionBFV, Attributes: AttrMRExtend},
	{DataOffset: 0, RawDataSize: 0x8000, MemoryAddress: 0xfffe0000, MemorySize: 0x8000, Type: SectionCFV},
	{MemoryAddress: 0x810000, MemorySize: 0x10000, Type: SectionTempMem},
	{MemoryAddress: 0x809000, MemorySize: 0x2000, Type: SectionTDHOB},
	{MemoryAddress: 0x800000, MemorySize: 0x6000, Type: SectionTempMem},
}

const syntheticFWSize = 0x20000

// syntheticFirmware builds a 128 KiB TDVF-like image: pseudo-random bytes,
// TDVF metadata 0x1000 bytes from the end and a footer table pointing at it.
func syntheticFirmware(sections []Section) []byte {
	fw := kat.Stream("tdvf", syntheticFWSize)
	const metaOff = 0x1000
	m := fw[len(fw)-metaOff:]
	copy(m, "TDVF")
	binary.LittleEndian.PutUint32(m[4:], uint32(tdvfHeaderSize+tdvfSectionSize*len(sections)))
	binary.LittleEndian.PutUint32(m[8:], 1)
	binary.LittleEndian.PutUint32(m[12:], uint32(len(sections)))
	for i, s := range sections {
		d := m[tdvfHeaderSize+i*tdvfSectionSize:]
		binary.LittleEndian.PutUint32(d, s.DataOffset)
		binary.LittleEndian.PutUint32(d[4:], s.RawDataSize)
		binary.LittleEndian.PutUint64(d[8:], s.MemoryAddress)
		binary.LittleEndian.PutUint64(d[16:], s.MemorySize)
		binary.LittleEndian.PutUint32(d[24:], uint32(s.Type))
		binary.LittleEndian.PutUint32(d[28:], s.Attributes)
	}
	kat.PutFooterTable(fw, kat.Entry{GUID: ovmf.TDXMetadataGUID, Data: binary.LittleEndian.AppendUint32(nil, metaOff)})
	return fw
}

// syntheticKernel builds a small bzImage-shaped PE32+ image: a setup header
// (boot protocol 2.15, relocatable, loadable above 4 GiB), three sections
// whose file order differs from their table order, trailing data and an
// attribute certificate table, so every Authenticode rule is exercised.
func syntheticKernel() []byte {
	const (
		size     = 0x6000 + 0x128 + 0x40 // a multiple of 8, see AuthenticodeSHA384
		peOff    = 0x80
		optSize  = 240
		certSize = 0x40
	)
	k := kat.Stream("pe-kernel", size)
	copy(k, "MZ")
	binary.LittleEndian.PutUint32(k[0x3c:], peOff)
	// Linux setup header fields PatchSetupHeader reads.
	copy(k[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(k[0x206:], 0x20f)
	k[0x211] = 0x01 // LOADED_HIGH
	binary.LittleEndian.PutUint16(k[0x236:], 0x7f)
	copy(k[peOff:], "PE\x00\x00")
	coff := k[peOff+4:]
	clear(coff[:20]) // no COFF symbol table
	binary.LittleEndian.PutUint16(coff, 0x8664)
	binary.LittleEndian.PutUint16(coff[2:], 3)
	binary.LittleEndian.PutUint16(coff[16:], optSize)
	opt := k[peOff+24:]
	clear(opt[:optSize])
	binary.LittleEndian.PutUint16(opt, 0x20b)
	binary.LittleEndian.PutUint32(opt[60:], 0x1000) // SizeOfHeaders
	binary.LittleEndian.PutUint32(opt[64:], 0xdeadbeef)
	binary.LittleEndian.PutUint32(opt[108:], 16) // NumberOfRvaAndSizes
	binary.LittleEndian.PutUint32(opt[112+4*8:], size-certSize)
	binary.LittleEndian.PutUint32(opt[112+4*8+4:], certSize)
	secs := k[peOff+24+optSize:]
	for i, s := range [][2]uint32{{0x3000, 0x2000}, {0x1000, 0x2000}, {0x5000, 0x1000}} { // offset, size
		e := secs[40*i:]
		clear(e[:40])
		copy(e, []string{".text", ".setup", ".data"}[i])
		binary.LittleEndian.PutUint32(e[16:], s[1])
		binary.LittleEndian.PutUint32(e[20:], s[0])
	}
	return k
}

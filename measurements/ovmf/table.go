// Package ovmf reads the GUIDed footer table that OVMF builds carry at the end
// of the firmware image: the table QEMU consults to find the SEV metadata, the
// SEV-ES reset block, the SEV hashes table and the TDX (TDVF) metadata.
//
// It only parses; deciding what a section means for a launch measurement is
// the job of measurements/snp and measurements/tdx.
package ovmf

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/uuid"
)

// GUIDs of the footer-table entries Cloak reads, as edk2's
// OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm declares them.
var (
	FooterGUID          = uuid.MustParse("96b582de-1fb2-45f7-baea-a366c55a082d")
	SEVHashTableRVGUID  = uuid.MustParse("7255371f-3a3b-4b04-927b-1da6efa8d454")
	SEVESResetBlockGUID = uuid.MustParse("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	SEVMetadataGUID     = uuid.MustParse("dc886566-984a-4798-a75e-5585a7bf67cc")
	TDXMetadataGUID     = uuid.MustParse("e47a6535-984a-4798-865e-4685a7bf8ec2")
	errNoFooter         = errors.New("no OVMF footer table (GUID 96b582de-1fb2-45f7-baea-a366c55a082d) 32 bytes before the end of the image: not an OVMF build, or a truncated file")
	ErrNotFound         = errors.New("entry not in the OVMF footer table")
)

const (
	// The table ends 32 bytes before the end of the image (the reset vector
	// and padding follow it).
	bytesAfterFooter = 32
	entryHeaderSize  = 2 + 16 // u16 size, GUID
)

// Table maps entry GUID to entry data (without the size+GUID trailer).
type Table map[uuid.UUID][]byte

// GUIDLE returns the little-endian (EFI_GUID) byte form of a GUID: the first
// three fields byte-swapped, the last two as written.
func GUIDLE(g uuid.UUID) [16]byte {
	var b [16]byte
	copy(b[:], g[:])
	b[0], b[1], b[2], b[3] = g[3], g[2], g[1], g[0]
	b[4], b[5] = g[5], g[4]
	b[6], b[7] = g[7], g[6]
	return b
}

func guidFromLE(b []byte) uuid.UUID {
	var g uuid.UUID
	copy(g[:], b)
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	return g
}

// ParseTable reads the footer table of a firmware image. Entries are laid out
// backwards from the footer: each entry is data || u16 size || GUID, where
// size covers the whole entry; the footer entry's size covers the table.
func ParseTable(fw []byte) (Table, error) {
	end := len(fw) - bytesAfterFooter
	if end < entryHeaderSize {
		return nil, errNoFooter
	}
	footer := fw[end-entryHeaderSize : end]
	if guidFromLE(footer[2:]) != FooterGUID {
		return nil, errNoFooter
	}
	size := int(binary.LittleEndian.Uint16(footer[:2]))
	if size < entryHeaderSize || size > end {
		return nil, fmt.Errorf("OVMF footer table claims %d bytes, outside the image", size)
	}
	tbl := fw[end-size : end-entryHeaderSize]
	t := Table{}
	for len(tbl) > 0 {
		if len(tbl) < entryHeaderSize {
			return nil, fmt.Errorf("OVMF footer table has %d stray bytes before its first entry", len(tbl))
		}
		hdr := tbl[len(tbl)-entryHeaderSize:]
		n := int(binary.LittleEndian.Uint16(hdr[:2]))
		if n < entryHeaderSize || n > len(tbl) {
			return nil, fmt.Errorf("OVMF footer table entry %s claims %d bytes, %d left", guidFromLE(hdr[2:]), n, len(tbl))
		}
		t[guidFromLE(hdr[2:])] = tbl[len(tbl)-n : len(tbl)-entryHeaderSize]
		tbl = tbl[:len(tbl)-n]
	}
	return t, nil
}

// Uint32 returns the first four bytes of an entry, little-endian: every entry
// Cloak reads starts with an address or an offset.
func (t Table) Uint32(g uuid.UUID) (uint32, error) {
	d, ok := t[g]
	if !ok {
		return 0, fmt.Errorf("%s: %w", g, ErrNotFound)
	}
	if len(d) < 4 {
		return 0, fmt.Errorf("OVMF footer table entry %s has %d bytes, want at least 4", g, len(d))
	}
	return binary.LittleEndian.Uint32(d), nil
}

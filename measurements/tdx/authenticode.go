package tdx

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// ErrNotPE marks a kernel that is not a PE/COFF image: TDVF boots a bzImage
// through its EFI stub and measures its Authenticode digest, so a kernel
// built without CONFIG_EFI_STUB cannot be measured (or booted) this way.
var ErrNotPE = errors.New("kernel is not a PE/COFF (EFI stub) image")

// maxPESections bounds the section table the digest walks; a bzImage has 4.
const maxPESections = 96

// AuthenticodeSHA384 returns the Authenticode digest of a PE image ("Windows
// Authenticode Portable Executable Signature Format", "Calculating the PE
// image hash"): the headers without the checksum and the certificate-table
// directory entry, the sections in file order, then any data after them
// except the attribute certificate table.
func AuthenticodeSHA384(img []byte) ([48]byte, error) {
	var d [48]byte
	if len(img) < 0x40 || img[0] != 'M' || img[1] != 'Z' {
		return d, fmt.Errorf("%w: no MZ header", ErrNotPE)
	}
	pe := int(binary.LittleEndian.Uint32(img[0x3c:]))
	if pe < 0x40 || pe > len(img)-24 || string(img[pe:pe+4]) != "PE\x00\x00" {
		return d, fmt.Errorf("%w: no PE signature at the e_lfanew offset", ErrNotPE)
	}
	nsec := int(binary.LittleEndian.Uint16(img[pe+6:]))
	optSize := int(binary.LittleEndian.Uint16(img[pe+20:]))
	opt := pe + 24
	if opt+optSize > len(img) || optSize < 96 {
		return d, fmt.Errorf("%w: optional header (%d bytes) outside the image", ErrNotPE, optSize)
	}
	var dirs, ndirsOff int
	switch binary.LittleEndian.Uint16(img[opt:]) {
	case 0x10b: // PE32
		ndirsOff, dirs = opt+92, opt+96
	case 0x20b: // PE32+
		ndirsOff, dirs = opt+108, opt+112
	default:
		return d, fmt.Errorf("%w: unknown optional header magic", ErrNotPE)
	}
	if dirs > opt+optSize {
		return d, fmt.Errorf("%w: optional header too short for its data directories", ErrNotPE)
	}
	checksum := opt + 64
	hdrSize := int(binary.LittleEndian.Uint32(img[opt+60:]))
	if hdrSize > len(img) || hdrSize < opt+optSize {
		return d, fmt.Errorf("%w: SizeOfHeaders %#x outside the image", ErrNotPE, hdrSize)
	}
	secTable := opt + optSize
	if nsec > maxPESections || secTable+40*nsec > len(img) {
		return d, fmt.Errorf("%w: %d sections, table outside the image", ErrNotPE, nsec)
	}

	h := sha512.New384()
	certSize := 0
	if ndirs := binary.LittleEndian.Uint32(img[ndirsOff:]); ndirs > 4 && dirs+5*8 <= opt+optSize {
		cert := dirs + 4*8
		h.Write(img[:checksum])
		h.Write(img[checksum+4 : cert])
		h.Write(img[cert+8 : hdrSize])
		certSize = int(binary.LittleEndian.Uint32(img[cert+4:]))
	} else {
		h.Write(img[:checksum])
		h.Write(img[checksum+4 : hdrSize])
	}

	type sec struct{ off, size int }
	secs := make([]sec, 0, nsec)
	for i := range nsec {
		e := img[secTable+40*i:]
		size := int(binary.LittleEndian.Uint32(e[16:]))
		off := int(binary.LittleEndian.Uint32(e[20:]))
		if size == 0 {
			continue
		}
		if off < 0 || size < 0 || off+size > len(img) || off+size < off {
			return d, fmt.Errorf("%w: section %d (%#x bytes at %#x) outside the image", ErrNotPE, i, size, off)
		}
		secs = append(secs, sec{off, size})
	}
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].off < secs[j].off })
	hashed := hdrSize
	for _, s := range secs {
		h.Write(img[s.off : s.off+s.size])
		hashed += s.size
	}
	// As edk2's DxeTpm2MeasureBootLib (what TDVF runs): the data after the
	// sections, without the certificate table and without the zero padding
	// to 8 bytes that signing tools add for a file size not a multiple of 8.
	if certSize < 0 || len(img) < certSize+hashed {
		return d, fmt.Errorf("%w: certificate table (%d bytes) overlaps the sections", ErrNotPE, certSize)
	}
	if extra := len(img) - certSize - hashed; extra > 0 {
		h.Write(img[hashed : hashed+extra])
	}
	h.Sum(d[:0])
	return d, nil
}

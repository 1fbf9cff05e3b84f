// Package kat makes the deterministic inputs that Cloak's known-answer tests
// for launch measurements feed both to Cloak and to the independent tools the
// expected values came from, so no large binary has to be committed.
package kat

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/google/uuid"

	"github.com/cloak-containers/cloak/measurements/ovmf"
)

// Stream returns n pseudo-random bytes: SHA-256(label || u64le(i)) for
// i = 0, 1, ... concatenated and cut to n. The same bytes come from
//
//	python3 -c 'import hashlib,sys;l,n=sys.argv[1].encode(),int(sys.argv[2]);sys.stdout.buffer.write(b"".join(hashlib.sha256(l+i.to_bytes(8,"little")).digest() for i in range(n//32+1))[:n])' LABEL N
func Stream(label string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	buf := make([]byte, len(label)+8)
	copy(buf, label)
	for i := uint64(0); len(out) < n; i++ {
		binary.LittleEndian.PutUint64(buf[len(label):], i)
		s := sha256.Sum256(buf)
		out = append(out, s[:]...)
	}
	return out[:n]
}

// Entry is one OVMF footer-table entry for PutFooterTable.
type Entry struct {
	GUID uuid.UUID
	Data []byte
}

// PutFooterTable writes an OVMF footer table of entries (first entry lowest
// in the image) so that it ends 32 bytes before the end of fw, as edk2's
// ResetVectorVtf0.asm lays it out: each entry data || u16 size || GUID, then
// the footer (u16 table size, footer GUID).
func PutFooterTable(fw []byte, entries ...Entry) {
	var table []byte
	put := func(g uuid.UUID, size int) {
		table = binary.LittleEndian.AppendUint16(table, uint16(size))
		le := ovmf.GUIDLE(g)
		table = append(table, le[:]...)
	}
	for _, e := range entries {
		table = append(table, e.Data...)
		put(e.GUID, len(e.Data)+18)
	}
	put(ovmf.FooterGUID, len(table)+18)
	copy(fw[len(fw)-32-len(table):], table)
}

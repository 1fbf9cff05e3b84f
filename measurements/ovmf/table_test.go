package ovmf

import (
	"encoding/binary"
	"testing"

	"github.com/google/uuid"
)

func image(entries map[uuid.UUID][]byte, order []uuid.UUID, footerSize func(int) int) []byte {
	var table []byte
	for _, g := range order {
		table = append(table, entries[g]...)
		table = binary.LittleEndian.AppendUint16(table, uint16(len(entries[g])+entryHeaderSize))
		le := GUIDLE(g)
		table = append(table, le[:]...)
	}
	table = binary.LittleEndian.AppendUint16(table, uint16(footerSize(len(table)+entryHeaderSize)))
	le := GUIDLE(FooterGUID)
	table = append(table, le[:]...)
	fw := make([]byte, 4096)
	copy(fw[len(fw)-bytesAfterFooter-len(table):], table)
	return fw
}

func TestParseTable(t *testing.T) {
	a, b := SEVMetadataGUID, TDXMetadataGUID
	entries := map[uuid.UUID][]byte{a: {1, 2, 3, 4}, b: {9, 0, 0, 0, 7, 7}}
	tbl, err := ParseTable(image(entries, []uuid.UUID{a, b}, func(n int) int { return n }))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := tbl.Uint32(a); err != nil || v != 0x04030201 {
		t.Errorf("entry a = %#x, %v", v, err)
	}
	if v, err := tbl.Uint32(b); err != nil || v != 9 || len(tbl[b]) != 6 {
		t.Errorf("entry b = %#x (%d bytes), %v", v, len(tbl[b]), err)
	}
	if _, err := tbl.Uint32(SEVHashTableRVGUID); err == nil {
		t.Error("absent entry found")
	}
	// A footer that claims more than the image, and one whose first entry
	// overruns the table, are refused rather than read out of bounds.
	for name, size := range map[string]func(int) int{
		"footer too big":   func(int) int { return 60000 },
		"entry overruns":   func(n int) int { return n - 3 },
		"footer too small": func(int) int { return 4 },
	} {
		if _, err := ParseTable(image(entries, []uuid.UUID{a, b}, size)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseTable(make([]byte, 4096)); err == nil {
		t.Error("an image without a footer GUID was accepted")
	}
	if _, err := ParseTable(make([]byte, 10)); err == nil {
		t.Error("a 10-byte image was accepted")
	}
}

func TestGUIDLE(t *testing.T) {
	le := GUIDLE(FooterGUID)
	want := []byte{0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d}
	if string(le[:]) != string(want) {
		t.Errorf("GUIDLE = %x, want %x", le, want)
	}
	if guidFromLE(le[:]) != FooterGUID {
		t.Error("guidFromLE does not invert GUIDLE")
	}
}

func FuzzParseTable(f *testing.F) {
	f.Add(image(map[uuid.UUID][]byte{SEVMetadataGUID: {1, 2, 3, 4}}, []uuid.UUID{SEVMetadataGUID}, func(n int) int { return n })[4000:])
	f.Fuzz(func(t *testing.T, b []byte) {
		tbl, err := ParseTable(b)
		if err != nil {
			return
		}
		for g := range tbl {
			_, _ = tbl.Uint32(g)
		}
	})
}

package kat

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// The digests of the Python one-liner's output (see Stream) for the inputs
// the launch-measurement known answers use: `python3 kat.py kernel 1048675 |
// sha256sum` and `... initrd 65543 | sha256sum`.
func TestStreamMatchesPython(t *testing.T) {
	for _, c := range []struct {
		label string
		n     int
		want  string
	}{
		{"kernel", 1048675, "afcd993c35e5c5b4d970236eabac111f8227e0b5004df7b0df19b84896b181f5"},
		{"initrd", 65543, "e65d87354ab15575cb585a47fa7faa9a087c0cf2b904683cc0dd0746780d34fe"},
	} {
		s := sha256.Sum256(Stream(c.label, c.n))
		if hex.EncodeToString(s[:]) != c.want {
			t.Errorf("Stream(%q, %d): sha256 %x, want %s", c.label, c.n, s, c.want)
		}
	}
}

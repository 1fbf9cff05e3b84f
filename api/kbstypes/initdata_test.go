package kbstypes

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"strings"
	"testing"
)

func TestInitdataDigest(t *testing.T) {
	for _, tt := range []struct {
		doc, alg string
		sum      func([]byte) []byte
	}{
		{"version = \"0.1.0\"\nalgorithm = \"sha256\"\n", "sha256", func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }},
		{"version = \"0.1.0\"\nalgorithm = \"sha384\"\n", "sha384", func(b []byte) []byte { s := sha512.Sum384(b); return s[:] }},
		{"version = \"0.1.0\"\nalgorithm = \"sha512\"\n", "sha512", func(b []byte) []byte { s := sha512.Sum512(b); return s[:] }},
		{"version = \"0.1.0\"\n", "sha384", func(b []byte) []byte { s := sha512.Sum384(b); return s[:] }},
	} {
		alg, d, err := InitdataDigest([]byte(tt.doc))
		if err != nil || alg != tt.alg || !bytes.Equal(d, tt.sum([]byte(tt.doc))) {
			t.Errorf("InitdataDigest(%q) = %s %x, %v; want %s over the exact bytes", tt.doc, alg, d, err, tt.alg)
		}
	}
	for doc, want := range map[string]string{
		"algorithm = \"md5\"\n":                "not supported",
		"algorithm = ":                         "not valid TOML",
		strings.Repeat("#", MaxInitdataSize+1): "limit",
	} {
		if _, _, err := InitdataDigest([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("InitdataDigest(%.20q): %v, want an error containing %q", doc, err, want)
		}
	}
}

func TestFitDigest(t *testing.T) {
	d := bytes.Repeat([]byte{7}, 48)
	if got := FitDigest(d, 32); !bytes.Equal(got, d[:32]) {
		t.Errorf("truncate: %x", got)
	}
	if got := FitDigest(d[:32], 48); !bytes.Equal(got[:32], d[:32]) || !bytes.Equal(got[32:], make([]byte, 16)) {
		t.Errorf("pad: %x", got)
	}
}

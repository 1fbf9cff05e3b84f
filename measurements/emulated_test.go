package measurements

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"testing"
)

// The expected values were computed with an independent implementation of
// the documented encoding (the Python snippet in README.md).
func TestEmulatedLaunchDigestKnownAnswer(t *testing.T) {
	tests := []struct {
		name           string
		kernel, initrd []byte
		cmdline        string
		want           string
	}{
		{"empty", nil, nil, "",
			"0b60a3a29a2df832b943ea748bccf55f72e392446e61f6477804bba14326bf2692e18c1d56ec6313ad3a050283d4ff5f"},
		{"small", []byte("kernel"), []byte("initrd"), "console=ttyS0",
			"cd6670cecabcad609498b55d9e9ff0600f6b9c76408182be8a2287c9e8a4c699d958983bf9293f0f6790ab5aacb0fa71"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := hex.EncodeToString(EmulatedLaunchDigest(tt.kernel, tt.initrd, tt.cmdline))
			if got != tt.want {
				t.Fatalf("digest = %s, want %s", got, tt.want)
			}
		})
	}
}

// Every input is bound: changing any one of them, or moving bytes between
// them, changes the digest.
func TestEmulatedLaunchDigestBindsEveryInput(t *testing.T) {
	base := EmulatedLaunchDigest([]byte("kernel"), []byte("initrd"), "console=ttyS0")
	tests := []struct {
		name           string
		kernel, initrd []byte
		cmdline        string
	}{
		{"kernel byte", []byte("kernek"), []byte("initrd"), "console=ttyS0"},
		{"initrd byte", []byte("kernel"), []byte("initre"), "console=ttyS0"},
		{"cmdline appended", []byte("kernel"), []byte("initrd"), "console=ttyS0 init=/bin/sh"},
		{"cmdline trailing NUL", []byte("kernel"), []byte("initrd"), "console=ttyS0\x00"},
		{"kernel and initrd swapped", []byte("initrd"), []byte("kernel"), "console=ttyS0"},
		{"bytes moved across fields", []byte("kernelinitrd"), nil, "console=ttyS0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EmulatedLaunchDigest(tt.kernel, tt.initrd, tt.cmdline); bytes.Equal(got, base) {
				t.Fatalf("digest unchanged: %x", got)
			}
		})
	}
}

func TestEmulatedLaunchDigestFromHashesAgrees(t *testing.T) {
	k, i, c := []byte("k"), []byte("i"), "c"
	want := EmulatedLaunchDigest(k, i, c)
	got := EmulatedLaunchDigestFromHashes(sha512.Sum384(k), sha512.Sum384(i), sha512.Sum384([]byte(c)))
	if !bytes.Equal(got, want) {
		t.Fatalf("from hashes = %x, want %x", got, want)
	}
}

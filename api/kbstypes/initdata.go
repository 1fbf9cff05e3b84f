package kbstypes

import (
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"

	"github.com/pelletier/go-toml/v2"
)

// MaxInitdataSize bounds an initdata document wherever it is read.
const MaxInitdataSize = 256 << 10

// DefaultInitdataAlgorithm is the digest of a document that names none.
const DefaultInitdataAlgorithm = "sha384"

// InitdataDigest is the digest an initdata document (CoCo's TOML: version,
// algorithm, [data]) is known by: its own algorithm (sha256, sha384 or
// sha512) over the exact bytes. The host binds it into the launch (SNP
// HOST_DATA, TDX MRCONFIGID, a vTPM's PCR 8), the guest checks that binding
// and the KBS compares it with the init-data it is sent, so all three must
// compute it here.
func InitdataDigest(doc []byte) (algorithm string, digest []byte, err error) {
	if len(doc) > MaxInitdataSize {
		return "", nil, fmt.Errorf("initdata is %d bytes, limit is %d", len(doc), MaxInitdataSize)
	}
	var d struct {
		Algorithm string `toml:"algorithm"`
	}
	if err := toml.Unmarshal(doc, &d); err != nil {
		return "", nil, fmt.Errorf("initdata is not valid TOML: %w", err)
	}
	if d.Algorithm == "" {
		d.Algorithm = DefaultInitdataAlgorithm
	}
	var h hash.Hash
	switch d.Algorithm {
	case "sha256":
		h = sha256.New()
	case "sha384":
		h = sha512.New384()
	case "sha512":
		h = sha512.New()
	default:
		return "", nil, fmt.Errorf("initdata algorithm %q not supported (use sha256, sha384 or sha512)", d.Algorithm)
	}
	h.Write(doc)
	return d.Algorithm, h.Sum(nil), nil
}

// FitDigest fits an initdata digest into a TEE field of n bytes as CoCo's
// initdata specification does: a longer digest is truncated, a shorter one
// zero-padded (SNP HOST_DATA is 32 bytes, so a sha384 document binds its
// first 32 digest bytes; TDX MRCONFIGID is 48).
func FitDigest(digest []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, digest)
	return out
}

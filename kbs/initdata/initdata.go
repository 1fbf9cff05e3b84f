// Package initdata parses the init-data document a guest presents with its
// evidence and computes the digest the evidence must bind (SNP HOST_DATA,
// TDX MRCONFIGID, or the sample/emulated equivalent). The digest is taken
// over the exact bytes received, never over a re-encoding.
package initdata

import (
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"

	"github.com/pelletier/go-toml/v2"

	"github.com/cloak-containers/cloak/kbstypes"
)

// MaxBodySize bounds the init-data document.
const MaxBodySize = 256 << 10

// DefaultAlgorithm is used when the document names none.
const DefaultAlgorithm = "sha384"

// Doc is a parsed init-data document.
type Doc struct {
	Version   string
	Algorithm string         // sha256 | sha384 | sha512
	Data      map[string]any // the [data] table, nil if absent
	Digest    []byte         // Algorithm over the body bytes
}

type document struct {
	Version   string         `toml:"version"`
	Algorithm string         `toml:"algorithm"`
	Data      map[string]any `toml:"data"`
}

// Parse validates the init-data of an attestation request.
func Parse(in *kbstypes.InitData) (*Doc, error) {
	if in.Format != "toml" {
		return nil, fmt.Errorf("init-data format %q not supported (want \"toml\")", in.Format)
	}
	if len(in.Body) > MaxBodySize {
		return nil, fmt.Errorf("init-data body is %d bytes, limit is %d", len(in.Body), MaxBodySize)
	}
	var d document
	if err := toml.Unmarshal([]byte(in.Body), &d); err != nil {
		return nil, fmt.Errorf("init-data body is not valid TOML: %w", err)
	}
	if d.Algorithm == "" {
		d.Algorithm = DefaultAlgorithm
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
		return nil, fmt.Errorf("init-data algorithm %q not supported (use sha256, sha384 or sha512)", d.Algorithm)
	}
	h.Write([]byte(in.Body))
	return &Doc{Version: d.Version, Algorithm: d.Algorithm, Data: d.Data, Digest: h.Sum(nil)}, nil
}

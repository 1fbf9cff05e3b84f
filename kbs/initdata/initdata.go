// Package initdata parses the init-data document a guest presents with its
// evidence and computes the digest the evidence must bind (SNP HOST_DATA,
// TDX MRCONFIGID, or the sample/emulated equivalent). The digest is taken
// over the exact bytes received, never over a re-encoding.
package initdata

import (
	"fmt"

	"github.com/pelletier/go-toml/v2"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// MaxBodySize bounds the init-data document.
const MaxBodySize = kbstypes.MaxInitdataSize

// DefaultAlgorithm is used when the document names none.
const DefaultAlgorithm = kbstypes.DefaultInitdataAlgorithm

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
	alg, digest, err := kbstypes.InitdataDigest([]byte(in.Body))
	if err != nil {
		return nil, fmt.Errorf("init-data: %w", err)
	}
	return &Doc{Version: d.Version, Algorithm: alg, Data: d.Data, Digest: digest}, nil
}

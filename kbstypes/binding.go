package kbstypes

import (
	"crypto/sha512"
	"encoding/json"
	"fmt"

	"github.com/gowebpki/jcs"
)

// ReportDataSize is the size of the report-data field of SNP/TDX reports.
const ReportDataSize = 64

// bindingDoc is the document whose canonical form is hashed into the
// evidence's report data.
type bindingDoc struct {
	AdditionalEvidence string          `json:"additional-evidence"`
	Nonce              string          `json:"nonce"`
	TeePubKey          json.RawMessage `json:"tee-pubkey"`
}

// ReportData returns the 64-byte report data that binds the nonce, the TEE
// public key and the additional evidence to a piece of evidence:
// SHA-384(JCS({"additional-evidence","nonce","tee-pubkey"})), zero-padded.
func ReportData(additionalEvidence, nonce string, teePubKey json.RawMessage) ([]byte, error) {
	doc, err := json.Marshal(bindingDoc{additionalEvidence, nonce, teePubKey})
	if err != nil {
		return nil, fmt.Errorf("encode runtime data: %w", err)
	}
	digest, err := CanonicalSHA384(doc)
	if err != nil {
		return nil, err
	}
	out := make([]byte, ReportDataSize)
	copy(out, digest)
	return out, nil
}

// CanonicalSHA384 returns SHA-384 over the RFC 8785 (JCS) form of a JSON text.
func CanonicalSHA384(jsonText []byte) ([]byte, error) {
	canon, err := jcs.Transform(jsonText)
	if err != nil {
		return nil, fmt.Errorf("canonicalize JSON (RFC 8785): %w", err)
	}
	sum := sha512.Sum384(canon)
	return sum[:], nil
}

package kbstypes

import (
	"crypto/sha512"
	"encoding/json"
	"fmt"

	"github.com/gowebpki/jcs"
)

// ReportDataSize is the size of the report-data field of SNP and TDX reports.
// It is also the most report data any TEE's evidence can bind.
const ReportDataSize = 64

// TPMReportDataSize is the size of the qualifying data (extraData) of tpm
// quotes: a SHA-256-sized TPM2B_DATA, as guest-components' TPM attester
// and Trustee's TPM verifier fix it (TPM_REPORT_DATA_SIZE = 32).
const TPMReportDataSize = 32

// RuntimeDataDigestSize is the size of RuntimeDataDigest's result (SHA-384),
// the report data of the "sample" TEE.
const RuntimeDataDigestSize = sha512.Size384

// bindingDoc is the document whose canonical form is hashed into the
// evidence's report data.
type bindingDoc struct {
	AdditionalEvidence string          `json:"additional-evidence"`
	Nonce              string          `json:"nonce"`
	TeePubKey          json.RawMessage `json:"tee-pubkey"`
}

// RuntimeDataDigest returns the digest that binds the nonce, the TEE public
// key and the additional evidence to a piece of evidence:
// SHA-384(JCS({"additional-evidence","nonce","tee-pubkey"})), 48 bytes. It
// is what Trustee's attestation service expects as report data and what
// guest-components hands to its attesters; each TEE then fits it into its
// own field: snp and tdx pad it (PadReportData), tpm cuts it
// (TPMReportData), "sample" carries it as is.
func RuntimeDataDigest(additionalEvidence, nonce string, teePubKey json.RawMessage) ([]byte, error) {
	doc, err := json.Marshal(bindingDoc{additionalEvidence, nonce, teePubKey})
	if err != nil {
		return nil, fmt.Errorf("encode runtime data: %w", err)
	}
	return CanonicalSHA384(doc)
}

// ReportData returns RuntimeDataDigest zero-padded to ReportDataSize: the
// report data SNP and TDX evidence carry.
func ReportData(additionalEvidence, nonce string, teePubKey json.RawMessage) ([]byte, error) {
	digest, err := RuntimeDataDigest(additionalEvidence, nonce, teePubKey)
	if err != nil {
		return nil, err
	}
	return PadReportData(digest)
}

// PadReportData returns a ReportDataSize-byte copy of rd, zero-padded, as
// guest-components' SNP and TDX attesters and Trustee's verifiers do. Longer
// input is refused: truncating it would bind less than the caller asked for.
func PadReportData(rd []byte) ([]byte, error) {
	if len(rd) > ReportDataSize {
		return nil, fmt.Errorf("report data is %d bytes, at most %d fit", len(rd), ReportDataSize)
	}
	out := make([]byte, ReportDataSize)
	copy(out, rd)
	return out, nil
}

// TPMReportData returns the qualifying data of a tpm quote for rd: its
// first TPMReportDataSize bytes, zero-padded if shorter. This is Rust's
// Vec::resize(32, 0), which guest-components' TPM attester applies to the
// report data it is handed and Trustee's TPM verifier to the expected one,
// so the 48-byte runtime-data digest is cut to its first 32 bytes (a
// SHA-384 prefix, still 256 bits of binding).
func TPMReportData(rd []byte) []byte {
	out := make([]byte, TPMReportDataSize)
	copy(out, rd)
	return out
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

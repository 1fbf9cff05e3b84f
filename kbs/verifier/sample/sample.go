// Package sample verifies evidence of Trustee's unsigned development TEE
// "sample". Nothing in it is signed, so it proves nothing about the guest;
// it exists so the whole protocol can run on any machine. The default
// resource policy refuses tokens from it.
//
// It accepts what Trustee's sample verifier (trustee
// deps/verifier/src/sample/mod.rs) accepts: a JSON object with a string
// "svn" and a "report_data" whose standard-base64 decoding equals the
// expected report data, the 48-byte runtime-data digest, unpadded. The
// 64-byte zero-padded form older Cloak guests sent is refused, as Trustee
// refuses it, with an error that says so.
package sample

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/verifier"
)

// MaxEvidenceSize bounds the evidence document; real sample evidence is
// about 80 bytes.
const MaxEvidenceSize = 4 << 10

// Verifier verifies sample evidence.
type Verifier struct{}

var _ verifier.Verifier = Verifier{}

// wireEvidence is kbstypes.SampleEvidence with svn optional, to tell a
// missing svn (refused, as serde refuses it) from an empty one (accepted).
type wireEvidence struct {
	SVN        *string `json:"svn"`
	ReportData string  `json:"report_data"`
}

// Verify parses kbstypes.SampleEvidence and checks that its report data
// equals expectedReportData byte for byte. The claims are svn, report_data
// (hex), init_data (hex of the init-data digest the client sent, "" if none)
// and unsigned=true.
func (Verifier) Verify(_ context.Context, evidence json.RawMessage, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	if len(evidence) > MaxEvidenceSize {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample,
			fmt.Errorf("evidence is %d bytes, limit is %d", len(evidence), MaxEvidenceSize))
	}
	var ev wireEvidence
	dec := json.NewDecoder(bytes.NewReader(evidence))
	if err := dec.Decode(&ev); err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample, fmt.Errorf("want {\"svn\":...,\"report_data\":...}: %w", err))
	}
	if ev.SVN == nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample, fmt.Errorf("field \"svn\" is missing"))
	}
	rd, err := decodeReportData(ev.ReportData)
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample, fmt.Errorf("field \"report_data\" is not standard base64: %w", err))
	}
	if len(rd) != len(expectedReportData) {
		return nil, wrongLength(rd, expectedReportData)
	}
	if subtle.ConstantTimeCompare(rd, expectedReportData) != 1 {
		return nil, verifier.ReportDataMismatch(expectedReportData, rd)
	}
	return map[string]any{
		"svn":         *ev.SVN,
		"report_data": hex.EncodeToString(rd),
		"init_data":   hex.EncodeToString(initdataDigest),
		"unsigned":    true,
	}, nil
}

// decodeReportData decodes like the Rust base64 crate's STANDARD engine
// Trustee uses: padding required, no stray bits, no line breaks (which Go's
// decoder would otherwise skip).
func decodeReportData(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, fmt.Errorf("contains a line break")
	}
	return base64.StdEncoding.Strict().DecodeString(s)
}

// wrongLength names the length the KBS expects, and recognises the
// zero-padded form older Cloak guests sent so their operator knows to
// update the guest rather than suspect a replay.
func wrongLength(got, expected []byte) error {
	detail := fmt.Sprintf("report_data is %d bytes, want %d: the raw SHA-384 runtime-data digest, unpadded, as Trustee's sample attester sends it",
		len(got), len(expected))
	if len(got) == kbstypes.ReportDataSize && len(expected) < len(got) &&
		bytes.Equal(got[:len(expected)], expected) && bytes.Count(got[len(expected):], []byte{0}) == len(got)-len(expected) {
		detail += "; this is the zero-padded 64-byte form of Cloak guests before the Trustee-compatible sample format: update the guest's cloak-aa"
	}
	return &verifier.CheckError{Check: verifier.CheckReportData, Detail: detail}
}

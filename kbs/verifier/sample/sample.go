// Package sample verifies evidence of Trustee's unsigned development TEE
// "sample". Nothing in it is signed, so it proves nothing about the guest;
// it exists so the whole protocol can run on any machine. The default
// resource policy refuses tokens from it.
package sample

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbstypes"
)

// MaxEvidenceSize bounds the evidence document; real sample evidence is
// about 120 bytes.
const MaxEvidenceSize = 4 << 10

// Verifier verifies sample evidence.
type Verifier struct{}

var _ verifier.Verifier = Verifier{}

// Verify parses kbstypes.SampleEvidence and checks that its report data equals
// the expected binding. The claims are svn, report_data (hex), init_data (hex
// of the init-data digest the client sent, "" if none) and unsigned=true.
func (Verifier) Verify(_ context.Context, evidence json.RawMessage, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	if len(evidence) > MaxEvidenceSize {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample,
			fmt.Errorf("evidence is %d bytes, limit is %d", len(evidence), MaxEvidenceSize))
	}
	var ev kbstypes.SampleEvidence
	dec := json.NewDecoder(bytes.NewReader(evidence))
	if err := dec.Decode(&ev); err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample, fmt.Errorf("want {\"svn\":...,\"report_data\":...}: %w", err))
	}
	if ev.SVN == "" {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample, fmt.Errorf("field \"svn\" is missing"))
	}
	rd, err := base64.StdEncoding.DecodeString(ev.ReportData)
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSample, fmt.Errorf("field \"report_data\" is not standard base64: %w", err))
	}
	if len(rd) != kbstypes.ReportDataSize || subtle.ConstantTimeCompare(rd, expectedReportData) != 1 {
		return nil, verifier.ReportDataMismatch(expectedReportData, rd)
	}
	return map[string]any{
		"svn":         ev.SVN,
		"report_data": hex.EncodeToString(rd),
		"init_data":   hex.EncodeToString(initdataDigest),
		"unsigned":    true,
	}, nil
}

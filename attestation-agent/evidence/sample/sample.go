// Package sample provides evidence of Trustee's unsigned development TEE
// "sample". Nothing in it is measured or signed: a KBS must only accept it
// in development setups, and Cloak's default policies refuse it.
package sample

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// DefaultSVN is the security version number reported when none is configured.
const DefaultSVN = "1"

// Provider produces kbstypes.SampleEvidence.
type Provider struct {
	svn string
}

// New returns a sample provider reporting svn ("" means DefaultSVN).
func New(svn string) *Provider {
	if svn == "" {
		svn = DefaultSVN
	}
	return &Provider{svn: svn}
}

// Tee returns kbstypes.TeeSample.
func (p *Provider) Tee() string { return kbstypes.TeeSample }

// Evidence returns the JSON of kbstypes.SampleEvidence for reportData.
// report_data is reportData itself, unpadded: for the KBS that is the 48-byte
// runtime-data digest, exactly what guest-components' sample attester
// (attestation-agent/attester/src/sample/mod.rs) sends and what Trustee's
// sample verifier compares.
func (p *Provider) Evidence(_ context.Context, reportData []byte) (json.RawMessage, error) {
	if len(reportData) > kbstypes.ReportDataSize {
		return nil, fmt.Errorf("sample evidence: report data is %d bytes, at most %d fit", len(reportData), kbstypes.ReportDataSize)
	}
	out, err := json.Marshal(kbstypes.SampleEvidence{
		SVN:        p.svn,
		ReportData: base64.StdEncoding.EncodeToString(reportData),
	})
	if err != nil {
		return nil, fmt.Errorf("encode sample evidence: %w", err)
	}
	return out, nil
}

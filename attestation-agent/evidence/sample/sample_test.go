package sample

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

func TestEvidence(t *testing.T) {
	rd := bytes.Repeat([]byte{0xab}, kbstypes.RuntimeDataDigestSize)
	tests := []struct {
		name, svn, wantSVN string
	}{
		{"default svn", "", DefaultSVN},
		{"configured svn", "7", "7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := New(tc.svn)
			if p.Tee() != kbstypes.TeeSample {
				t.Fatalf("Tee() = %q, want %q", p.Tee(), kbstypes.TeeSample)
			}
			raw, err := p.Evidence(context.Background(), rd)
			if err != nil {
				t.Fatal(err)
			}
			var ev kbstypes.SampleEvidence
			if err := json.Unmarshal(raw, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.SVN != tc.wantSVN {
				t.Errorf("svn = %q, want %q", ev.SVN, tc.wantSVN)
			}
			got, err := base64.StdEncoding.DecodeString(ev.ReportData)
			if err != nil || !bytes.Equal(got, rd) {
				t.Errorf("report_data = %q (%v), want base64 of input", ev.ReportData, err)
			}
		})
	}
}

// Report data is carried as given, never padded, up to the 64 bytes the
// local API's tagged report data needs.
func TestEvidenceReportDataSizes(t *testing.T) {
	for _, n := range []int{0, 32, 48, 64} {
		raw, err := New("").Evidence(context.Background(), bytes.Repeat([]byte{7}, n))
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		var ev kbstypes.SampleEvidence
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatal(err)
		}
		if got, _ := base64.StdEncoding.DecodeString(ev.ReportData); len(got) != n {
			t.Errorf("%d bytes in, %d bytes in report_data", n, len(got))
		}
	}
	if _, err := New("").Evidence(context.Background(), make([]byte, 65)); err == nil {
		t.Error("report data of 65 bytes accepted")
	}
}

// trusteeAccepts re-implements the check of Trustee's sample verifier
// (trustee deps/verifier/src/sample/mod.rs, verify_tee_evidence): serde
// decodes {"svn": String, "report_data": String (default "")}, then the
// STANDARD-base64 decoding of report_data must equal the expected report
// data, which Trustee's attestation service computes as the SHA-384 of the
// canonical runtime data, unpadded (attestation-service/src/lib.rs
// parse_runtime_data).
func trusteeAccepts(t *testing.T, evidence []byte, expected []byte) bool {
	t.Helper()
	var q struct {
		SVN        *string `json:"svn"`
		ReportData string  `json:"report_data"`
	}
	if err := json.Unmarshal(evidence, &q); err != nil || q.SVN == nil {
		return false
	}
	rd, err := base64.StdEncoding.Strict().DecodeString(q.ReportData)
	return err == nil && bytes.Equal(rd, expected)
}

// What cloak-aa sends for a KBS challenge is what a Trustee KBS accepts.
func TestEvidenceAcceptedByTrusteeSampleVerifier(t *testing.T) {
	const nonce = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	key := json.RawMessage(`{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}`)
	digest, err := kbstypes.RuntimeDataDigest("", nonce, key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := New("").Evidence(context.Background(), digest)
	if err != nil {
		t.Fatal(err)
	}
	// The exact bytes guest-components' sample attester serializes.
	const want = `{"svn":"1","report_data":"imJERBsbEXGzodVqaT1M4RbB+coa5Vi8X1nUba2lTPSekqNhqyRyxDRlL+1Yh/Ft"}`
	if string(raw) != want {
		t.Errorf("evidence %s, want %s", raw, want)
	}
	if !trusteeAccepts(t, raw, digest) {
		t.Errorf("Trustee's sample verifier would refuse %s", raw)
	}
	padded, err := kbstypes.PadReportData(digest)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := New("").Evidence(context.Background(), padded)
	if trusteeAccepts(t, old, digest) {
		t.Error("the re-implemented Trustee check accepts zero-padded report data; it must not")
	}
}

package evidence_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/google/go-sev-guest/abi"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/tdx"
)

// The known answer of kbstypes' TestReportDataKnownAnswer: a fixed nonce and
// the P-256 key of RFC 7517 appendix A.1, hashed outside Go.
const (
	katNonce  = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	katJWK    = `{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}`
	katDigest = "8a6244441b1b1171b3a1d56a693d4ce116c1f9ca1ae558bc5f59d46dada54cf49e92a361ab2472c434652fed5887f16d"
	katPadded = katDigest + "00000000000000000000000000000000"
)

// snpSource records the REPORT_DATA asked of the firmware.
type snpSource struct{ asked []byte }

func (*snpSource) Name() string { return "kat" }

func (s *snpSource) Report(_ context.Context, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	s.asked = rd[:]
	r := make([]byte, abi.ReportSize)
	copy(r[0x50:], rd[:]) // REPORT_DATA, SEV-SNP firmware ABI table 22
	return r, nil, nil
}

// tdxSource records the REPORTDATA asked of the quoting service.
type tdxSource struct{ asked []byte }

func (*tdxSource) Name() string { return "kat" }

func (s *tdxSource) Quote(_ context.Context, rd [kbstypes.ReportDataSize]byte) ([]byte, error) {
	s.asked = rd[:]
	q := make([]byte, 0x3FC)
	q[0] = 4                    // quote version 4
	copy(q[0x30+0x208:], rd[:]) // TD quote body REPORTDATA
	return q, nil
}

// TestReportDataAsSentKnownAnswer pins, per TEE, the report data that leaves
// the guest for the KBS binding of katNonce and katJWK: sample sends the
// SHA-384 digest unpadded in its JSON (as guest-components' sample attester
// does), snp and tdx ask the platform for it zero-padded to 64 bytes (as
// guest-components' SNP and TDX attesters do). tpm needs a TPM to run; its
// provider cuts with kbstypes.TPMReportData, pinned in kbstypes, and
// ci/integration's TestTPMSwtpmEvidence checks a real quote carries it.
func TestReportDataAsSentKnownAnswer(t *testing.T) {
	digest, err := kbstypes.RuntimeDataDigest("", katNonce, json.RawMessage(katJWK))
	if err != nil {
		t.Fatal(err)
	}
	snpSrc, tdxSrc := &snpSource{}, &tdxSource{}
	tests := []struct {
		provider evidence.Provider
		sent     func(t *testing.T, ev json.RawMessage) []byte
		want     string
	}{
		{sample.New(""), func(t *testing.T, ev json.RawMessage) []byte {
			var s kbstypes.SampleEvidence
			if err := json.Unmarshal(ev, &s); err != nil {
				t.Fatal(err)
			}
			b, err := base64.StdEncoding.DecodeString(s.ReportData)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}, katDigest},
		{snp.New(snpSrc), func(*testing.T, json.RawMessage) []byte { return snpSrc.asked }, katPadded},
		{tdx.New(tdxSrc, tdx.Paths{CCEL: filepath.Join(t.TempDir(), "no-ccel")}), func(*testing.T, json.RawMessage) []byte { return tdxSrc.asked }, katPadded},
	}
	for _, tc := range tests {
		t.Run(tc.provider.Tee(), func(t *testing.T) {
			ev, err := tc.provider.Evidence(context.Background(), digest)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(tc.sent(t, ev)); got != tc.want {
				t.Errorf("report data sent = %s, want %s", got, tc.want)
			}
		})
	}
}

package sample

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/verifier"
)

// The known-answer binding of kbstypes' TestReportDataKnownAnswer: nonce
// katNonce and key katJWK give this runtime-data digest.
const (
	katNonce  = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	katJWK    = `{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}`
	katDigest = "8a6244441b1b1171b3a1d56a693d4ce116c1f9ca1ae558bc5f59d46dada54cf49e92a361ab2472c434652fed5887f16d"
)

func evidence(t testing.TB, svn string, rd []byte) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(map[string]string{"svn": svn, "report_data": base64.StdEncoding.EncodeToString(rd)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// trusteeSampleEvidence builds evidence the way guest-components'
// attestation-agent/attester/src/sample/mod.rs does: SampleQuote{svn: "1",
// report_data: STANDARD.encode(report_data)} serialized by serde_json, where
// report_data is the runtime-data digest the KBS protocol client hashed
// (kbs_protocol/src/client/rcar_client.rs), unpadded.
func trusteeSampleEvidence(digest []byte) json.RawMessage {
	return json.RawMessage(`{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(digest) + `"}`)
}

func TestVerifyAcceptsTrusteeSampleAttester(t *testing.T) {
	digest, err := kbstypes.RuntimeDataDigest("", katNonce, json.RawMessage(katJWK))
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(digest) != katDigest {
		t.Fatalf("binding changed: digest %x, want %s", digest, katDigest)
	}
	ev := trusteeSampleEvidence(digest)
	if want := `{"svn":"1","report_data":"imJERBsbEXGzodVqaT1M4RbB+coa5Vi8X1nUba2lTPSekqNhqyRyxDRlL+1Yh/Ft"}`; string(ev) != want {
		t.Fatalf("evidence %s, want %s", ev, want)
	}
	claims, err := Verifier{}.Verify(context.Background(), ev, digest, nil)
	if err != nil {
		t.Fatalf("Trustee-format sample evidence refused: %v", err)
	}
	if claims["report_data"] != katDigest {
		t.Errorf("claim report_data = %v, want %s", claims["report_data"], katDigest)
	}
}

func TestVerify(t *testing.T) {
	want := bytes.Repeat([]byte{0xab}, kbstypes.RuntimeDataDigestSize)
	other := bytes.Repeat([]byte{0xcd}, kbstypes.RuntimeDataDigestSize)
	padded := append(append([]byte{}, want...), make([]byte, 16)...)
	tests := []struct {
		name      string
		evidence  json.RawMessage
		wantCheck string // "" means success
		wantText  string
	}{
		{"ok", evidence(t, "1", want), "", ""},
		// serde accepts any string svn, the empty one too, and unknown fields.
		{"empty svn", json.RawMessage(`{"svn":"","report_data":"` + base64.StdEncoding.EncodeToString(want) + `"}`), "", ""},
		{"unknown field", json.RawMessage(`{"svn":"1","x":2,"report_data":"` + base64.StdEncoding.EncodeToString(want) + `"}`), "", ""},
		{"mismatch", evidence(t, "1", other), verifier.CheckReportData, "expected abab"},
		{"short report data", evidence(t, "1", want[:32]), verifier.CheckReportData, "report_data is 32 bytes, want 48"},
		{"old zero-padded form", evidence(t, "1", padded), verifier.CheckReportData, "zero-padded 64-byte form"},
		{"64 bytes, not padding", evidence(t, "1", bytes.Repeat([]byte{0xab}, 64)), verifier.CheckReportData, "report_data is 64 bytes, want 48: the raw SHA-384"},
		{"missing report_data", json.RawMessage(`{"svn":"1"}`), verifier.CheckReportData, "report_data is 0 bytes, want 48"},
		{"not json", json.RawMessage(`nope`), verifier.CheckEvidence, "malformed sample evidence"},
		{"missing svn", json.RawMessage(`{"report_data":""}`), verifier.CheckEvidence, `"svn" is missing`},
		{"null svn", json.RawMessage(`{"svn":null,"report_data":""}`), verifier.CheckEvidence, `"svn" is missing`},
		{"numeric svn", json.RawMessage(`{"svn":1,"report_data":""}`), verifier.CheckEvidence, "malformed sample evidence"},
		{"bad base64", json.RawMessage(`{"svn":"1","report_data":"!!"}`), verifier.CheckEvidence, "not standard base64"},
		{"unpadded base64", json.RawMessage(`{"svn":"1","report_data":"` + base64.RawStdEncoding.EncodeToString(want[:47]) + `"}`), verifier.CheckEvidence, "not standard base64"},
		{"stray bits", json.RawMessage(`{"svn":"1","report_data":"qx=="}`), verifier.CheckEvidence, "not standard base64"},
		{"line break", json.RawMessage(`{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(want)[:8] + `\n` + base64.StdEncoding.EncodeToString(want)[8:] + `"}`), verifier.CheckEvidence, "line break"},
		{"too large", json.RawMessage(`{"svn":"` + strings.Repeat("1", MaxEvidenceSize) + `"}`), verifier.CheckEvidence, "limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			claims, err := Verifier{}.Verify(context.Background(), tc.evidence, want, []byte{1, 2})
			if tc.wantCheck == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if claims["unsigned"] != true || claims["init_data"] != "0102" ||
					claims["report_data"] != strings.Repeat("ab", 48) {
					t.Fatalf("claims = %v", claims)
				}
				return
			}
			var ce *verifier.CheckError
			if !errors.As(err, &ce) || ce.Check != tc.wantCheck {
				t.Fatalf("err = %v, want check %q", err, tc.wantCheck)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.wantText)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	want := bytes.Repeat([]byte{0xab}, kbstypes.RuntimeDataDigestSize)
	f.Add([]byte(evidence(f, "1", want)))
	f.Add([]byte(evidence(f, "1", append(append([]byte{}, want...), make([]byte, 16)...))))
	f.Add([]byte(`{"svn":"1","report_data":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		claims, err := Verifier{}.Verify(context.Background(), data, want, nil)
		if err == nil && claims["report_data"] != strings.Repeat("ab", 48) {
			t.Fatalf("accepted evidence with wrong report data: %v", claims)
		}
		var ce *verifier.CheckError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("untyped error %v", err)
		}
	})
}

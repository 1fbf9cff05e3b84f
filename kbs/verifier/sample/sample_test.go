package sample

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/kbs/verifier"
)

func evidence(t testing.TB, svn string, rd []byte) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(map[string]string{"svn": svn, "report_data": base64.StdEncoding.EncodeToString(rd)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerify(t *testing.T) {
	want := bytes.Repeat([]byte{0xab}, 64)
	other := bytes.Repeat([]byte{0xcd}, 64)
	tests := []struct {
		name      string
		evidence  json.RawMessage
		wantCheck string // "" means success
		wantText  string
	}{
		{"ok", evidence(t, "1", want), "", ""},
		{"mismatch", evidence(t, "1", other), verifier.CheckReportData, "expected abab"},
		{"short report data", evidence(t, "1", want[:32]), verifier.CheckReportData, "got abab"},
		{"not json", json.RawMessage(`nope`), verifier.CheckEvidence, "malformed sample evidence"},
		{"missing svn", json.RawMessage(`{"report_data":""}`), verifier.CheckEvidence, `"svn" is missing`},
		{"bad base64", json.RawMessage(`{"svn":"1","report_data":"!!"}`), verifier.CheckEvidence, "not standard base64"},
		{"too large", json.RawMessage(`{"svn":"` + strings.Repeat("1", MaxEvidenceSize) + `"}`), verifier.CheckEvidence, "limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			claims, err := Verifier{}.Verify(context.Background(), tc.evidence, want, []byte{1, 2})
			if tc.wantCheck == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if claims["svn"] != "1" || claims["unsigned"] != true || claims["init_data"] != "0102" ||
					claims["report_data"] != strings.Repeat("ab", 64) {
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
	want := bytes.Repeat([]byte{0xab}, 64)
	f.Add([]byte(evidence(f, "1", want)))
	f.Add([]byte(`{"svn":"1","report_data":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		claims, err := Verifier{}.Verify(context.Background(), data, want, nil)
		if err == nil && claims["report_data"] != strings.Repeat("ab", 64) {
			t.Fatalf("accepted evidence with wrong report data: %v", claims)
		}
		var ce *verifier.CheckError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("untyped error %v", err)
		}
	})
}

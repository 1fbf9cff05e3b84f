package sample

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/cloak-containers/cloak/kbstypes"
)

func TestEvidence(t *testing.T) {
	rd := bytes.Repeat([]byte{0xab}, kbstypes.ReportDataSize)
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

func TestEvidenceRejectsWrongReportDataSize(t *testing.T) {
	for _, n := range []int{0, 32, 63, 65} {
		if _, err := New("").Evidence(context.Background(), make([]byte, n)); err == nil {
			t.Errorf("report data of %d bytes accepted", n)
		}
	}
}

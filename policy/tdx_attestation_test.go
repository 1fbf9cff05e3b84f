package policy

import (
	"context"
	"strings"
	"testing"
)

func tdxClaims(mrtd, rtmr1 string, debug bool, tcb string, emulated bool) map[string]any {
	return map[string]any{
		"tdx": map[string]any{
			"mr_td": mrtd, "rtmr0": "r0", "rtmr1": rtmr1, "rtmr2": "r2", "rtmr3": "r3",
			"debug": debug, "tcb_status": tcb, "qe_tcb_status": "UpToDate", "emulated": emulated,
		},
		"init_data":        "",
		"init_data_claims": nil,
	}
}

func TestDefaultAttestationTDX(t *testing.T) {
	ref := map[string][]string{"tdx_mr_td": {"m"}, "tdx_rtmr1": {"r1"}}
	tests := []struct {
		name   string
		claims map[string]any
		ref    map[string][]string
		want   map[string]int
		status string
		find   string // a finding message or claim that must appear
	}{
		{"all good", tdxClaims("m", "r1", false, "UpToDate", false), ref,
			map[string]int{"executables": 3, "hardware": 2, "configuration": 2}, "affirming", "the TD is not a debug TD"},
		{"unknown mrtd", tdxClaims("x", "r1", false, "UpToDate", false), ref,
			map[string]int{"executables": 33, "hardware": 2, "configuration": 2}, "warning", `tdx.mr_td "x" is not among reference values`},
		{"unknown rtmr1", tdxClaims("m", "x", false, "UpToDate", false), ref,
			map[string]int{"executables": 33, "hardware": 2, "configuration": 2}, "warning", `tdx.rtmr1 "x" is not among reference values`},
		{"no mrtd reference", tdxClaims("m", "r1", false, "UpToDate", false), map[string][]string{},
			map[string]int{"executables": 33, "hardware": 2, "configuration": 2}, "warning", `reference value "tdx_mr_td" is not set`},
		{"debug TD", tdxClaims("m", "r1", true, "UpToDate", false), ref,
			map[string]int{"executables": 3, "hardware": 2, "configuration": 96}, "contraindicated", "host can read and change its memory"},
		{"tcb out of date", tdxClaims("m", "r1", false, "OutOfDate", false), ref,
			map[string]int{"executables": 3, "hardware": 97, "configuration": 2}, "contraindicated", `tcb_status "OutOfDate" is not accepted`},
		{"tcb not supported", tdxClaims("m", "r1", false, "NotSupported", false), ref,
			map[string]int{"hardware": 97}, "contraindicated", `tcb_status "NotSupported" is not accepted`},
		{"admin accepts SWHardeningNeeded", tdxClaims("m", "r1", false, "SWHardeningNeeded", false),
			map[string][]string{"tdx_mr_td": {"m"}, "tdx_tcb_status": {"UpToDate", "SWHardeningNeeded"}},
			map[string]int{"executables": 3, "hardware": 2, "configuration": 2}, "affirming", `tcb_status "SWHardeningNeeded" is accepted`},
		// Emulated evidence never rates hardware trustworthy: warning at best.
		{"emulated is at most warning", tdxClaims("m", "r1", false, "UpToDate", true), ref,
			map[string]int{"executables": 3, "hardware": 32, "configuration": 2}, "warning", "emulated root"},
	}
	p := mustCompileAttestation(t, DefaultAttestationSource())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Appraise(context.Background(), AppraisalInput{Tee: "tdx", Claims: tc.claims, Reference: tc.ref})
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if got.TrustVector[k] != v {
					t.Errorf("%s = %d, want %d (vector %v)", k, got.TrustVector[k], v, got.TrustVector)
				}
			}
			if got.Status != tc.status {
				t.Errorf("status = %s, want %s", got.Status, tc.status)
			}
			found := false
			for _, f := range got.Findings {
				if strings.Contains(f.Message, tc.find) || f.Claim == tc.find {
					found = true
				}
			}
			if !found {
				t.Errorf("no finding mentions %q: %+v", tc.find, got.Findings)
			}
		})
	}
}

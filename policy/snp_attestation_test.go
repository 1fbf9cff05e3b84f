package policy

import (
	"context"
	"strings"
	"testing"
)

func snpClaims(measurement string, debug bool, microcode int, emulated bool) map[string]any {
	return map[string]any{
		"snp": map[string]any{
			"measurement":  measurement,
			"host_data":    strings.Repeat("00", 32),
			"emulated":     emulated,
			"policy":       map[string]any{"debug": debug},
			"reported_tcb": map[string]any{"bootloader": 3, "tee": 0, "snp": 8, "microcode": microcode},
		},
		"init_data":        "",
		"init_data_claims": nil,
	}
}

func TestDefaultAttestationSNP(t *testing.T) {
	const m = "aa"
	ref := map[string][]string{
		"snp_launch_measurement":    {m},
		"snp_minimum_tcb_microcode": {"115"},
		"snp_minimum_tcb_snp":       {"8"},
	}
	tests := []struct {
		name   string
		claims map[string]any
		ref    map[string][]string
		want   map[string]int
		status string
		find   string // a finding message that must appear
	}{
		{"all good", snpClaims(m, false, 115, false), ref,
			map[string]int{"executables": 3, "hardware": 2, "configuration": 2}, "affirming", "forbids debugging"},
		{"unknown measurement", snpClaims("bb", false, 115, false), ref,
			map[string]int{"executables": 33, "hardware": 2, "configuration": 2}, "warning", "is not among reference values"},
		{"debug allowed", snpClaims(m, true, 115, false), ref,
			map[string]int{"executables": 3, "hardware": 2, "configuration": 96}, "contraindicated", "host can read guest memory"},
		{"tcb below minimum", snpClaims(m, false, 114, false), ref,
			map[string]int{"executables": 3, "hardware": 97, "configuration": 2}, "contraindicated", "microcode SPL 114 is below the minimum 115"},
		{"no minimum set", snpClaims(m, false, 1, false), map[string][]string{"snp_launch_measurement": {m}},
			map[string]int{"executables": 3, "hardware": 2, "configuration": 2}, "affirming", ""},
		{"host data not approved", snpClaims(m, false, 115, false),
			map[string][]string{"snp_launch_measurement": {m}, "snp_host_data": {strings.Repeat("11", 32)}},
			map[string]int{"executables": 3, "hardware": 2, "configuration": 96}, "contraindicated", "snp.host_data"},
		// Emulated evidence never rates hardware trustworthy: warning at best.
		{"emulated is at most warning", snpClaims(m, false, 115, true), ref,
			map[string]int{"executables": 3, "hardware": 32, "configuration": 2}, "warning", "emulated root"},
		{"emulated below the TCB minimum stays contraindicated", snpClaims(m, false, 114, true), ref,
			map[string]int{"executables": 3, "hardware": 97, "configuration": 2}, "contraindicated", "emulated root"},
	}
	p := mustCompileAttestation(t, DefaultAttestationSource())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Appraise(context.Background(), AppraisalInput{Tee: "snp", Claims: tc.claims, Reference: tc.ref})
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
			if tc.find != "" {
				found := false
				for _, f := range got.Findings {
					if strings.Contains(f.Message, tc.find) || f.Claim == tc.find {
						found = true
					}
				}
				if !found {
					t.Errorf("no finding mentions %q: %+v", tc.find, got.Findings)
				}
			}
		})
	}
}

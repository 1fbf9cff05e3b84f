package policy

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
)

// emulatedEAR is the EAR of emulated evidence appraised as the KBS does:
// hardware capped at 32 (warning), executables as given.
func emulatedEAR(evidence map[string]any, executables int) map[string]any {
	c := earClaims("warning", evidence)
	c["submods"].(map[string]any)["cpu0"].(map[string]any)["ear.trustworthiness-vector"] = map[string]any{
		"hardware": 32, "executables": executables, "configuration": 2, "file-system": 0,
	}
	return c
}

// TestAllowEmulatedExample checks the development policy the demo and the
// CI tests install: keys only for affirming emulated guests, with reasons.
func TestAllowEmulatedExample(t *testing.T) {
	src, err := os.ReadFile("examples/allow-emulated.rego")
	if err != nil {
		t.Fatal(err)
	}
	p := mustCompileResource(t, src)
	emuSNP := map[string]any{"snp": map[string]any{"emulated": true, "measurement": "aa"}}
	emuTDX := map[string]any{"tdx": map[string]any{"emulated": true}}
	realSNP := map[string]any{"snp": map[string]any{"emulated": false, "measurement": "aa"}}
	tests := []struct {
		name       string
		claims     map[string]any
		allow      bool
		wantReason string
	}{
		{"affirming emulated SNP", earClaims("affirming", emuSNP), true, ""},
		{"affirming emulated TDX", earClaims("affirming", emuTDX), true, ""},
		// What the KBS issues for good emulated evidence: hardware 32, warning.
		{"emulated SNP, warning for the hardware only", emulatedEAR(emuSNP, 3), true, ""},
		{"emulated TDX, warning for the hardware only", emulatedEAR(emuTDX, 3), true, ""},
		{"emulated SNP with a wrong measurement", emulatedEAR(emuSNP, 33), false, "attestation status of cpu0 is warning, not affirming"},
		{"real SNP with a hardware warning", emulatedEAR(realSNP, 3), false, "attestation status of cpu0 is warning"},
		{"real SNP", earClaims("affirming", realSNP), false, "the evidence is not from an emulated TEE: this development policy releases keys to emulated guests only"},
		{"sample", earClaims("affirming", map[string]any{"sample": map[string]any{"svn": "1"}}), false, "not from an emulated TEE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := p.Decide(context.Background(), tt.claims, "default/image-key/demo")
			if err != nil {
				t.Fatal(err)
			}
			if d.Allow != tt.allow {
				t.Errorf("allow = %v, want %v (%+v)", d.Allow, tt.allow, d)
			}
			if tt.wantReason != "" && !slices.ContainsFunc(d.Reasons, func(r string) bool { return strings.Contains(r, tt.wantReason) }) {
				t.Errorf("reasons %q lack %q", d.Reasons, tt.wantReason)
			}
		})
	}
}

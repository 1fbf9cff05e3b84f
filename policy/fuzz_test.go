package policy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// addRegoSeeds seeds f with the default policies and every fixture except
// the deliberately slow ones.
func addRegoSeeds(f *testing.F) {
	f.Add(DefaultAttestationSource())
	f.Add(DefaultResourceSource())
	files, err := filepath.Glob(filepath.Join("testdata", "trustee_*.rego"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		src, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Add([]byte("package policy\nhardware := 2 if {\n"))
	f.Add([]byte("package other\nallow := true\n"))
	f.Add([]byte{0xff, 0xfe, 0x00})
}

// FuzzCompile feeds arbitrary bytes to both compilers: they must return a
// policy or an error, never panic.
func FuzzCompile(f *testing.F) {
	addRegoSeeds(f)
	f.Fuzz(func(t *testing.T, src []byte) {
		if p, err := CompileAttestation("fuzz", src); err == nil && p.ID() != "fuzz" {
			t.Fatalf("ID = %q", p.ID())
		}
		_, _ = CompileResource(src)
	})
}

// fuzzTimeout bounds one evaluation; the default policies take microseconds,
// so hitting it would itself be a finding worth looking at.
const fuzzTimeout = 5 * time.Second

// FuzzAppraise feeds arbitrary JSON claims and reference values to the
// default attestation policy: it must return an appraisal with a valid
// status or an error, never panic.
func FuzzAppraise(f *testing.F) {
	f.Add([]byte(`{"sample":{"svn":"1"},"init_data":""}`), []byte(`{"sample_svn":["1"]}`))
	f.Add([]byte(`{"sample":{"svn":1,"launch_digest":["x"]},"init_data":7}`), []byte(`{"sample_launch_digest":[]}`))
	f.Add([]byte(`{"sample":true}`), []byte(`{}`))
	f.Add([]byte(`{"snp":{"measurement":"aa"},"init_data":"feed","init_data_claims":{"a":1}}`), []byte(`{"init_data":["feed"]}`))
	policy := mustCompileAttestation(f, DefaultAttestationSource())
	statuses := map[string]bool{"affirming": true, "warning": true, "contraindicated": true, "none": true}
	f.Fuzz(func(t *testing.T, claimsJSON, referenceJSON []byte) {
		var claims map[string]any
		var reference map[string][]string
		if json.Unmarshal(claimsJSON, &claims) != nil || json.Unmarshal(referenceJSON, &reference) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
		defer cancel()
		got, err := policy.Appraise(ctx, AppraisalInput{Tee: "sample", Claims: claims, Reference: reference})
		if err != nil {
			return
		}
		if !statuses[got.Status] {
			t.Fatalf("Status = %q", got.Status)
		}
		if _, ok := got.TrustVector["hardware"]; !ok {
			t.Fatalf("TrustVector %v lacks the hardware claim the default policy always sets", got.TrustVector)
		}
	})
}

// FuzzDecide feeds arbitrary JSON token claims to the default resource
// policy: it must decide or fail, never panic, and never allow a token whose
// evidence names the sample TEE.
func FuzzDecide(f *testing.F) {
	f.Add([]byte(`{"submods":{"cpu0":{"ear.status":"affirming","ear.veraison.annotated-evidence":{"snp":{}}}}}`), "r/t/x")
	f.Add([]byte(`{"submods":{"cpu0":{"ear.status":"affirming","ear.veraison.annotated-evidence":{"sample":{}}}}}`), "r/t/x")
	f.Add([]byte(`{"submods":[{"ear.status":"affirming"}]}`), "")
	f.Add([]byte(`{"submods":{}}`), "a/b/c")
	policy := mustCompileResource(f, DefaultResourceSource())
	f.Fuzz(func(t *testing.T, claimsJSON []byte, path string) {
		var claims map[string]any
		if json.Unmarshal(claimsJSON, &claims) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
		defer cancel()
		got, err := policy.Decide(ctx, claims, path)
		if err != nil {
			return
		}
		if got.Allow && hasSampleEvidence(claims) {
			t.Fatalf("allowed sample evidence: %s", claimsJSON)
		}
		if len(got.Reasons) == 0 || got.Rule == "" {
			t.Fatalf("Decision %+v lacks a rule or reasons", got)
		}
	})
}

func hasSampleEvidence(claims map[string]any) bool {
	submods, _ := claims["submods"].(map[string]any)
	for _, s := range submods {
		submod, _ := s.(map[string]any)
		evidence, _ := submod["ear.veraison.annotated-evidence"].(map[string]any)
		if _, ok := evidence["sample"]; ok {
			return true
		}
	}
	return false
}

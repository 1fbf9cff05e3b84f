package policy

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// earClaims builds EAR token claims the way the KBS does: one submodule
// "cpu0" with a status and the TEE's claims as annotated evidence.
func earClaims(status string, evidence map[string]any) map[string]any {
	return map[string]any{
		"eat_profile": "tag:github.com,2023:veraison/ear",
		"submods": map[string]any{
			"cpu0": map[string]any{
				"ear.status":                      status,
				"ear.trustworthiness-vector":      map[string]any{"hardware": 2},
				"ear.veraison.annotated-evidence": evidence,
			},
		},
	}
}

func mustCompileResource(t testing.TB, src []byte) *ResourcePolicy {
	t.Helper()
	p, err := CompileResource(src)
	if err != nil {
		t.Fatalf("CompileResource: %v", err)
	}
	return p
}

const (
	reasonSample = "evidence comes from the unsigned sample TEE; set a resource policy that allows it for development"
	reasonEmu    = "evidence comes from an emulated TEE; set a resource policy that allows emulated evidence for testing"
)

func TestDefaultResourcePolicy(t *testing.T) {
	policy := mustCompileResource(t, DefaultResourceSource())
	snp := map[string]any{"snp": map[string]any{"measurement": "aa"}}
	sample := map[string]any{"sample": map[string]any{"svn": "1"}}
	tests := []struct {
		name   string
		claims map[string]any
		want   Decision
	}{
		{"affirming hardware TEE", earClaims("affirming", snp),
			Decision{true, "allow", []string{"the resource policy's allow rule holds for repo/key/1"}}},
		{"sample TEE denied", earClaims("affirming", sample),
			Decision{false, "deny_sample", []string{reasonSample}}},
		{"warning status denied", earClaims("warning", snp),
			Decision{false, "deny_status", []string{
				"attestation status is not affirming (cpu0: warning); the evidence must satisfy the attestation policy"}}},
		{"contraindicated status denied", earClaims("contraindicated", snp),
			Decision{false, "deny_status", []string{
				"attestation status is not affirming (cpu0: contraindicated); the evidence must satisfy the attestation policy"}}},
		{"emulated denied", earClaims("affirming", map[string]any{"snp": map[string]any{"emulated": true}}),
			Decision{false, "deny_emulated", []string{reasonEmu}}},
		{"emulated false allowed", earClaims("affirming", map[string]any{"snp": map[string]any{"emulated": false}}),
			Decision{true, "allow", []string{"the resource policy's allow rule holds for repo/key/1"}}},
		{"sample with warning: status first, both reasons", earClaims("warning", sample),
			Decision{false, "deny_status", []string{
				"attestation status is not affirming (cpu0: warning); the evidence must satisfy the attestation policy",
				reasonSample}}},
		{"no submods", map[string]any{"eat_profile": "x"},
			Decision{false, "deny_status", []string{"the token carries no attestation result (no submods); attest again"}}},
		{"nil claims", nil,
			Decision{false, "deny_status", []string{"the token carries no attestation result (no submods); attest again"}}},
		{"missing status", map[string]any{"submods": map[string]any{"cpu0": map[string]any{
			"ear.veraison.annotated-evidence": snp}}},
			Decision{false, "deny_status", []string{
				"attestation status is not affirming (cpu0: missing); the evidence must satisfy the attestation policy"}}},
		{"submods of the wrong type", map[string]any{"submods": "affirming"},
			Decision{false, "deny_status", []string{"the token carries no attestation result (no submods); attest again"}}},
		{"second submodule not affirming", map[string]any{"submods": map[string]any{
			"cpu0": map[string]any{"ear.status": "affirming", "ear.veraison.annotated-evidence": snp},
			"gpu0": map[string]any{"ear.status": "warning"}}},
			Decision{false, "deny_status", []string{
				"attestation status is not affirming (cpu0: affirming, gpu0: warning); the evidence must satisfy the attestation policy"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := policy.Decide(context.Background(), tt.claims, "repo/key/1")
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decide = %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

func TestTrusteeResourcePolicies(t *testing.T) {
	sample := func(productID string) map[string]any {
		return earClaims("warning", map[string]any{"sample": map[string]any{"productId": productID, "svn": "1"}})
	}
	tests := []struct {
		name   string
		file   string
		claims map[string]any
		path   string
		allow  bool
		rule   string
	}{
		{"v0 productId matches type", "trustee_v0_resource.rego", sample("key"), "repo/key/1", true, "allow"},
		{"v0 productId differs", "trustee_v0_resource.rego", sample("cert"), "repo/key/1", false, DefaultDenyRule},
		{"v0 no sample evidence", "trustee_v0_resource.rego", earClaims("affirming", nil), "repo/key/1", false, DefaultDenyRule},
		{"v1 affirming sample allowed", "trustee_v1_resource.rego",
			earClaims("affirming", map[string]any{"sample": map[string]any{}}), "repo/key/1", true, "allow"},
		{"v1 warning denied", "trustee_v1_resource.rego", sample("key"), "repo/key/1", false, DefaultDenyRule},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			policy := mustCompileResource(t, readTestdata(t, tt.file))
			got, err := policy.Decide(context.Background(), tt.claims, tt.path)
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if got.Allow != tt.allow || got.Rule != tt.rule {
				t.Errorf("Decide = %+v, want allow %v rule %q", got, tt.allow, tt.rule)
			}
			if len(got.Reasons) != 1 || !strings.Contains(got.Reasons[0], "repo/key/1") {
				t.Errorf("Reasons = %q, want one generic sentence naming the resource", got.Reasons)
			}
		})
	}
}

func TestResourcePolicyData(t *testing.T) {
	// data carries the request exactly as Trustee's KBS passes it.
	src := `package policy
import rego.v1
default allow := false
allow if {
	data.plugin == "resource"
	data["resource-path"] == "my-repo/key/tag.1"
}
`
	policy := mustCompileResource(t, []byte(src))
	for path, want := range map[string]bool{"my-repo/key/tag.1": true, "my-repo/key/tag.2": false} {
		got, err := policy.Decide(context.Background(), earClaims("affirming", nil), path)
		if err != nil {
			t.Fatal(err)
		}
		if got.Allow != want {
			t.Errorf("Decide(%s).Allow = %v, want %v", path, got.Allow, want)
		}
	}
}

func TestResourcePolicyDenyRuleOrder(t *testing.T) {
	src := `package policy
import rego.v1
default allow := false
deny_zeta if input.z
deny_alpha if input.a
reasons contains "custom reason" if deny_alpha
`
	policy := mustCompileResource(t, []byte(src))
	tests := []struct {
		claims  map[string]any
		rule    string
		reasons []string
	}{
		{map[string]any{"z": true, "a": true}, "deny_zeta", []string{"custom reason"}},
		{map[string]any{"a": true}, "deny_alpha", []string{"custom reason"}},
		{map[string]any{}, DefaultDenyRule, []string{"no rule of the resource policy allows access to r/t/x"}},
	}
	for _, tt := range tests {
		got, err := policy.Decide(context.Background(), tt.claims, "r/t/x")
		if err != nil {
			t.Fatal(err)
		}
		if got.Allow || got.Rule != tt.rule || !reflect.DeepEqual(got.Reasons, tt.reasons) {
			t.Errorf("Decide(%v) = %+v, want deny by %q with %q", tt.claims, got, tt.rule, tt.reasons)
		}
	}
}

func TestResourcePolicyAllowUndefinedIsDeny(t *testing.T) {
	policy := mustCompileResource(t, []byte("package policy\nimport rego.v1\nallow if input.x == 1\n"))
	got, err := policy.Decide(context.Background(), map[string]any{"x": 2}, "r/t/x")
	if err != nil {
		t.Fatal(err)
	}
	if got.Allow || got.Rule != DefaultDenyRule {
		t.Errorf("Decide = %+v, want a deny", got)
	}
}

func TestResourcePolicyBadValues(t *testing.T) {
	tests := []struct {
		src     string
		wantErr string
	}{
		{"package policy\nallow := \"yes\"\n", `rule allow is "yes", want true or false`},
		{"package policy\nimport rego.v1\ndefault allow := false\nreasons contains 7\n", "reasons contains 7, want only strings"},
	}
	for _, tt := range tests {
		policy := mustCompileResource(t, []byte(tt.src))
		_, err := policy.Decide(context.Background(), nil, "r/t/x")
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Decide error = %v, want one containing %q", err, tt.wantErr)
		}
	}
}

func TestCompileResourceErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr []string
	}{
		{"empty", "", []string{"resource policy has only comments"}},
		{"no allow", "package policy\ndeny_all := true\n", []string{"defines no `allow` rule", "default allow := false"}},
		{"wrong package", "package kbs\ndefault allow := false\n", []string{`declares package "kbs"`}},
		{"malformed", "package policy\n\ndefault allow := false\n\nallow if {\n\tinput.x == [1,\n}\n",
			[]string{"parse resource policy", "line 7, column"}},
		{"v0 without keywords under v1 rules", "package policy\ndefault allow = false\nallow { input.x ==  }\n",
			[]string{"line 3, column"}},
		{"network builtin", "package policy\nimport rego.v1\nallow if net.lookup_ip_addr(\"localhost\")\n",
			[]string{"net.lookup_ip_addr"}},
		{"oversized", "package policy\ndefault allow := false\n" + strings.Repeat(" ", MaxSourceSize),
			[]string{"larger than the 262144-byte limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := CompileResource([]byte(tt.src))
			if err == nil {
				t.Fatal("CompileResource succeeded, want an error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestDecideHonoursDeadline(t *testing.T) {
	policy := mustCompileResource(t, readTestdata(t, "slow_resource.rego"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := policy.Decide(ctx, nil, "r/t/x")
	if err == nil {
		t.Fatal("Decide succeeded, want a cancellation error")
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Decide returned after %v, want soon after the 50ms deadline", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not match context.DeadlineExceeded", err)
	}
}

func BenchmarkDecide(b *testing.B) {
	policy := mustCompileResource(b, DefaultResourceSource())
	claims := earClaims("affirming", map[string]any{"snp": map[string]any{"measurement": "aa"}})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := policy.Decide(context.Background(), claims, "repo/key/1"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestDocumentedExamples keeps the examples README.md shows (and the opa
// eval commands it gives) in step with the default policies.
func TestDocumentedExamples(t *testing.T) {
	readJSON := func(name string, v any) {
		t.Helper()
		if err := json.Unmarshal(readTestdata(t, filepath.Join("examples", name)), v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var attInput map[string]any
	var attData struct{ Reference map[string][]string }
	readJSON("attestation-input.json", &attInput)
	readJSON("attestation-data.json", &attData)
	appraisal, err := mustCompileAttestation(t, DefaultAttestationSource()).Appraise(context.Background(),
		AppraisalInput{Tee: "sample", Claims: attInput, Reference: attData.Reference})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"hardware": 2, "configuration": 2}; !reflect.DeepEqual(appraisal.TrustVector, want) ||
		appraisal.Status != "affirming" || len(appraisal.Findings) != 2 {
		t.Errorf("attestation example: %+v, want vector %v, affirming, 2 findings", appraisal, want)
	}

	var resInput map[string]any
	var resData map[string]string
	readJSON("resource-input.json", &resInput)
	readJSON("resource-data.json", &resData)
	d, err := mustCompileResource(t, DefaultResourceSource()).Decide(context.Background(), resInput, resData["resource-path"])
	if err != nil {
		t.Fatal(err)
	}
	if !d.Allow || d.Rule != "allow" {
		t.Errorf("resource example: %+v, want allowed", d)
	}
}

package policy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
)

func sampleClaims(svn string, initData string) map[string]any {
	return map[string]any{
		"sample":           map[string]any{"svn": svn, "report_data": "AAAA"},
		"init_data":        initData,
		"init_data_claims": nil,
	}
}

func mustCompileAttestation(t testing.TB, src []byte) *AttestationPolicy {
	t.Helper()
	p, err := CompileAttestation("test", src)
	if err != nil {
		t.Fatalf("CompileAttestation: %v", err)
	}
	return p
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func findingFor(findings []adminapi.Finding, claim string) (adminapi.Finding, bool) {
	for _, f := range findings {
		if f.Claim == claim {
			return f, true
		}
	}
	return adminapi.Finding{}, false
}

func TestDefaultAttestationPolicy(t *testing.T) {
	policy := mustCompileAttestation(t, DefaultAttestationSource())
	type wantFinding struct {
		ok      bool
		message string
	}
	tests := []struct {
		name      string
		in        AppraisalInput
		vector    map[string]int
		status    string
		findings  map[string]wantFinding // by claim; only the listed ones are checked
		noFinding []string               // claims that must not have a finding
	}{
		{
			name: "affirming",
			in: AppraisalInput{Tee: "sample", Claims: sampleClaims("1", ""),
				Reference: map[string][]string{"sample_svn": {"1"}}},
			vector: map[string]int{"hardware": 2, "configuration": 2},
			status: "affirming",
			findings: map[string]wantFinding{
				"sample.svn": {true, `sample.svn "1" is among reference values ["1"]`},
				"init_data":  {true, "no initdata was supplied, so there is no guest configuration to check"},
			},
			noFinding: []string{"sample.launch_digest"},
		},
		{
			name: "wrong svn",
			in: AppraisalInput{Tee: "sample", Claims: sampleClaims("1", ""),
				Reference: map[string][]string{"sample_svn": {"2"}}},
			vector: map[string]int{"hardware": 97, "configuration": 2},
			status: "contraindicated",
			findings: map[string]wantFinding{
				"sample.svn": {false, `sample.svn "1" is not among reference values ["2"]`},
			},
		},
		{
			name:   "missing svn reference",
			in:     AppraisalInput{Tee: "sample", Claims: sampleClaims("1", "")},
			vector: map[string]int{"hardware": 97, "configuration": 2},
			status: "contraindicated",
			findings: map[string]wantFinding{
				"sample.svn": {false, `sample.svn "1" cannot be checked: reference value "sample_svn" is not set`},
			},
		},
		{
			name: "svn missing from evidence",
			in: AppraisalInput{Tee: "sample", Claims: map[string]any{"sample": map[string]any{"report_data": "AAAA"}},
				Reference: map[string][]string{"sample_svn": {"1"}}},
			vector: map[string]int{"hardware": 97, "configuration": 2},
			status: "contraindicated",
			findings: map[string]wantFinding{
				"sample.svn": {false, "sample.svn is missing from the evidence"},
			},
		},
		{
			name: "launch digest reference set but not reported",
			in: AppraisalInput{Tee: "sample", Claims: sampleClaims("1", ""),
				Reference: map[string][]string{"sample_svn": {"1"}, "sample_launch_digest": {"abcd"}}},
			vector: map[string]int{"hardware": 2, "configuration": 2, "executables": 33},
			status: "warning",
			findings: map[string]wantFinding{
				"sample.launch_digest": {false, "sample.launch_digest is missing from the evidence"},
			},
		},
		{
			name: "launch digest matches",
			in: AppraisalInput{Tee: "sample",
				Claims:    map[string]any{"sample": map[string]any{"svn": "1", "launch_digest": "abcd"}},
				Reference: map[string][]string{"sample_svn": {"1"}, "sample_launch_digest": {"0000", "abcd"}}},
			vector: map[string]int{"hardware": 2, "configuration": 2, "executables": 3},
			status: "affirming",
			findings: map[string]wantFinding{
				"sample.launch_digest": {true, `sample.launch_digest "abcd" is among reference values ["0000","abcd"]`},
			},
		},
		{
			name: "initdata accepted",
			in: AppraisalInput{Tee: "sample", Claims: sampleClaims("1", "feed"),
				Reference: map[string][]string{"sample_svn": {"1"}, "init_data": {"feed"}}},
			vector: map[string]int{"hardware": 2, "configuration": 2},
			status: "affirming",
			findings: map[string]wantFinding{
				"init_data": {true, `init_data "feed" is among reference values ["feed"]`},
			},
		},
		{
			name: "initdata mismatch",
			in: AppraisalInput{Tee: "sample", Claims: sampleClaims("1", "beef"),
				Reference: map[string][]string{"sample_svn": {"1"}, "init_data": {"feed"}}},
			vector: map[string]int{"hardware": 2, "configuration": 36},
			status: "warning",
			findings: map[string]wantFinding{
				"init_data": {false, `init_data "beef" is not among reference values ["feed"]`},
			},
		},
		{
			name: "initdata without reference",
			in: AppraisalInput{Tee: "sample", Claims: sampleClaims("1", "beef"),
				Reference: map[string][]string{"sample_svn": {"1"}}},
			vector: map[string]int{"hardware": 2, "configuration": 36},
			status: "warning",
			findings: map[string]wantFinding{
				"init_data": {false, `init_data "beef" cannot be checked: reference value "init_data" is not set`},
			},
		},
		{
			name: "unknown TEE stays contraindicated",
			in: AppraisalInput{Tee: "cca", Claims: map[string]any{"cca": map[string]any{"measurement": "aa"}, "init_data": ""},
				Reference: map[string][]string{"sample_svn": {"1"}}},
			vector:    map[string]int{"hardware": 97, "configuration": 2},
			status:    "contraindicated",
			noFinding: []string{"sample.svn"},
		},
		{
			name:   "no claims at all",
			in:     AppraisalInput{Tee: "sample"},
			vector: map[string]int{"hardware": 97, "configuration": 2}, // no initdata: nothing to check
			status: "contraindicated",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := policy.Appraise(context.Background(), tt.in)
			if err != nil {
				t.Fatalf("Appraise: %v", err)
			}
			if got.PolicyID != "test" {
				t.Errorf("PolicyID = %q, want %q", got.PolicyID, "test")
			}
			if !reflect.DeepEqual(got.TrustVector, tt.vector) {
				t.Errorf("TrustVector = %v, want %v", got.TrustVector, tt.vector)
			}
			if got.Status != tt.status {
				t.Errorf("Status = %q, want %q", got.Status, tt.status)
			}
			for claim, want := range tt.findings {
				f, ok := findingFor(got.Findings, claim)
				if !ok {
					t.Errorf("no finding for %s in %+v", claim, got.Findings)
					continue
				}
				if f.OK != want.ok || f.Message != want.message {
					t.Errorf("finding %s = ok %v %q, want ok %v %q", claim, f.OK, f.Message, want.ok, want.message)
				}
			}
			for _, claim := range tt.noFinding {
				if f, ok := findingFor(got.Findings, claim); ok {
					t.Errorf("unexpected finding for %s: %+v", claim, f)
				}
			}
		})
	}
}

func TestDefaultAttestationFindingFields(t *testing.T) {
	policy := mustCompileAttestation(t, DefaultAttestationSource())
	got, err := policy.Appraise(context.Background(), AppraisalInput{Tee: "sample", Claims: sampleClaims("1", ""),
		Reference: map[string][]string{"sample_svn": {"2", "3"}}})
	if err != nil {
		t.Fatal(err)
	}
	f, ok := findingFor(got.Findings, "sample.svn")
	if !ok {
		t.Fatalf("no sample.svn finding in %+v", got.Findings)
	}
	want := adminapi.Finding{Claim: "sample.svn", Group: "hardware", Value: "1", Reference: []any{"2", "3"},
		OK: false, Message: `sample.svn "1" is not among reference values ["2","3"]`, ReferenceName: "sample_svn"}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("finding = %#v, want %#v", f, want)
	}
}

func TestTrusteeAttestationPolicies(t *testing.T) {
	claims := map[string]any{"sample": map[string]any{
		"svn": "1", "launch_digest": "abcd", "platform_version": map[string]any{"major": 1, "minor": 0},
	}}
	tests := []struct {
		file      string
		reference map[string][]string
		vector    map[string]int
		status    string
	}{
		{"trustee_v1_attestation.rego", map[string][]string{"svn": {"1"}, "launch_digest": {"abcd"}},
			// major_version is a scalar reference in Trustee's example, which a
			// list cannot match: hardware stays 97.
			map[string]int{"executables": 3, "hardware": 97, "configuration": 36, "file-system": 0}, "contraindicated"},
		{"trustee_v1_attestation.rego", nil,
			map[string]int{"executables": 33, "hardware": 97, "configuration": 36, "file-system": 0}, "contraindicated"},
		{"trustee_v0_attestation.rego", map[string][]string{"svn": {"1"}, "launch_digest": {"abcd"}},
			map[string]int{"executables": 3, "hardware": 2}, "affirming"},
		{"trustee_v0_attestation.rego", map[string][]string{"svn": {"1"}, "launch_digest": {"ffff"}},
			map[string]int{"executables": 33, "hardware": 2}, "warning"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v", tt.file, tt.reference), func(t *testing.T) {
			policy := mustCompileAttestation(t, readTestdata(t, tt.file))
			got, err := policy.Appraise(context.Background(), AppraisalInput{Tee: "sample", Claims: claims, Reference: tt.reference})
			if err != nil {
				t.Fatalf("Appraise: %v", err)
			}
			if !reflect.DeepEqual(got.TrustVector, tt.vector) || got.Status != tt.status {
				t.Errorf("got %v %q, want %v %q", got.TrustVector, got.Status, tt.vector, tt.status)
			}
			if got.Findings != nil {
				t.Errorf("Findings = %v, want none from a policy without a findings rule", got.Findings)
			}
		})
	}
}

// TestAttestationStatusTiers checks the AR4SI tier boundaries, negatives
// included, and that the worst tier wins.
func TestAttestationStatusTiers(t *testing.T) {
	tests := []struct {
		rules  string
		status string
	}{
		{"hardware := 2 if false", "none"}, // defined rule, never set
		{"hardware := 0", "none"},
		{"hardware := 1\nexecutables := -1", "none"},
		{"hardware := 2", "affirming"},
		{"hardware := 31", "affirming"},
		{"hardware := -2", "affirming"},
		{"hardware := -32", "affirming"},
		{"hardware := 32", "warning"},
		{"hardware := 95", "warning"},
		{"hardware := -33", "warning"},
		{"hardware := 96", "contraindicated"},
		{"hardware := 127", "contraindicated"},
		{"hardware := -97", "contraindicated"},
		{"hardware := -128", "contraindicated"},
		{"hardware := 2\nexecutables := 33\nconfiguration := 0", "warning"},
		{"instance_identity := 2\nsourced_data := 96\nruntime_opaque := 2", "contraindicated"},
	}
	for _, tt := range tests {
		t.Run(tt.rules, func(t *testing.T) {
			policy := mustCompileAttestation(t, []byte("package policy\n"+tt.rules+"\n"))
			got, err := policy.Appraise(context.Background(), AppraisalInput{Tee: "sample"})
			if err != nil {
				t.Fatalf("Appraise: %v", err)
			}
			if got.Status != tt.status {
				t.Errorf("Status = %q, want %q (vector %v)", got.Status, tt.status, got.TrustVector)
			}
		})
	}
}

func TestAttestationTrustVectorNames(t *testing.T) {
	src := `package policy
instance_identity := 2
configuration := 3
executables := 4
file_system := 5
hardware := 6
runtime_opaque := 7
storage_opaque := 8
sourced_data := 9
unrelated := 99
`
	got, err := mustCompileAttestation(t, []byte(src)).Appraise(context.Background(), AppraisalInput{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"instance-identity": 2, "configuration": 3, "executables": 4, "file-system": 5,
		"hardware": 6, "runtime-opaque": 7, "storage-opaque": 8, "sourced-data": 9}
	if !reflect.DeepEqual(got.TrustVector, want) {
		t.Errorf("TrustVector = %v, want %v", got.TrustVector, want)
	}
}

func TestAttestationBadRuleValues(t *testing.T) {
	tests := []struct {
		rules   string
		wantErr string
	}{
		{`hardware := "2"`, `rule hardware is "2", want an integer`},
		{`hardware := 128`, "rule hardware is 128, want an integer"},
		{`hardware := -129`, "rule hardware is -129, want an integer"},
		{`hardware := 2.5`, "rule hardware is 2.5, want an integer"},
		{`hardware := true`, "rule hardware is true, want an integer"},
		{"hardware := 2\nfindings := [1]", "rule findings: element 0 is 1"},
		{"hardware := 2\nfindings := [{\"ok\": true}]", `"claim" must name the compared claim`},
		{"hardware := 2\nfindings := [{\"claim\": \"x\", \"ok\": \"yes\"}]", "rule findings: element 0"},
	}
	for _, tt := range tests {
		t.Run(tt.rules, func(t *testing.T) {
			policy := mustCompileAttestation(t, []byte("package policy\n"+tt.rules+"\n"))
			_, err := policy.Appraise(context.Background(), AppraisalInput{Tee: "sample"})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Appraise error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestAttestationFindingsAsArray(t *testing.T) {
	src := `package policy
hardware := 2
findings := [
	{"claim": "b", "ok": true},
	{"claim": "a", "group": "hardware", "value": 7, "reference": [7], "ok": true, "message": "fine"},
]
`
	got, err := mustCompileAttestation(t, []byte(src)).Appraise(context.Background(), AppraisalInput{})
	if err != nil {
		t.Fatal(err)
	}
	want := []adminapi.Finding{
		{Claim: "b", OK: true},
		{Claim: "a", Group: "hardware", Value: float64(7), Reference: []any{float64(7)}, OK: true, Message: "fine"},
	}
	if !reflect.DeepEqual(got.Findings, want) {
		t.Errorf("Findings = %#v, want %#v (array order kept)", got.Findings, want)
	}
}

func TestCompileAttestationErrors(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		src     string
		wantErr []string
	}{
		{"empty id", "", "package policy\nhardware := 2\n", []string{"id is empty"}},
		{"empty source", "p", "", []string{"only comments and blank lines", "`package policy`"}},
		{"comment only", "p", "# nothing\n\n  # more\n", []string{"only comments and blank lines"}},
		{"malformed v1", "p", "package policy\n\nhardware := 2 if {\n\tinput.x ==\n}\n",
			[]string{`attestation policy "p"`, "line 5, column 1: unexpected } token"}},
		{"malformed v0", "p", "package policy\n\nhardware = 2 {\n\tinput.x = = 1\n}\n",
			[]string{"line 4, column"}},
		{"wrong package", "p", "package trustee\nhardware := 2\n",
			[]string{`declares package "trustee"`, "`package policy`"}},
		{"nested package", "p", "package policy.sub\nhardware := 2\n", []string{`declares package "policy.sub"`}},
		{"no trust claim", "p", "package policy\nallow := true\n", []string{"defines no trust-claim rule"}},
		{"unknown function", "p", "package policy\nhardware := nope(1)\n",
			[]string{"line 2, column", "nope"}},
		{"network builtin", "p", "package policy\nhardware := 2 if http.send({\"method\": \"get\", \"url\": \"http://127.0.0.1:1\"})\n",
			[]string{"http.send"}},
		{"environment builtin", "p", "package policy\nhardware := 2 if opa.runtime().env\n", []string{"opa.runtime"}},
		{"oversized", "p", "package policy\nhardware := 2\n" + strings.Repeat("#", MaxSourceSize),
			[]string{"larger than the 262144-byte limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := CompileAttestation(tt.id, []byte(tt.src))
			if err == nil {
				t.Fatal("CompileAttestation succeeded, want an error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestCompileAttestationAcceptsSizeLimit(t *testing.T) {
	src := "package policy\nhardware := 2\n"
	src += strings.Repeat("#", MaxSourceSize-len(src)-1) + "\n"
	if _, err := CompileAttestation("p", []byte(src)); err != nil {
		t.Fatalf("policy of exactly %d bytes refused: %v", len(src), err)
	}
}

func TestDefaultSourcesAreCopies(t *testing.T) {
	src := DefaultAttestationSource()
	src[0] = 'X'
	if DefaultAttestationSource()[0] == 'X' {
		t.Error("DefaultAttestationSource returned the embedded slice itself")
	}
	src = DefaultResourceSource()
	src[0] = 'X'
	if DefaultResourceSource()[0] == 'X' {
		t.Error("DefaultResourceSource returned the embedded slice itself")
	}
}

func TestAppraiseHonoursDeadline(t *testing.T) {
	policy := mustCompileAttestation(t, readTestdata(t, "slow_attestation.rego"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := policy.Appraise(ctx, AppraisalInput{Tee: "sample"})
	if err == nil {
		t.Fatal("Appraise succeeded, want a cancellation error")
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Appraise returned after %v, want soon after the 50ms deadline", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not match context.DeadlineExceeded", err)
	}
}

// TestAppraiseConcurrentReferences checks that concurrent appraisals with
// different reference values do not see each other's data.
func TestAppraiseConcurrentReferences(t *testing.T) {
	policy := mustCompileAttestation(t, DefaultAttestationSource())
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			svn := fmt.Sprint(i % 2)
			got, err := policy.Appraise(context.Background(), AppraisalInput{Tee: "sample", Claims: sampleClaims("1", ""),
				Reference: map[string][]string{"sample_svn": {svn}}})
			if err != nil {
				errs <- err
				return
			}
			want := map[string]int{"0": 97, "1": 2}[svn]
			if got.TrustVector["hardware"] != want {
				errs <- fmt.Errorf("reference svn %s: hardware = %d, want %d", svn, got.TrustVector["hardware"], want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkAppraise(b *testing.B) {
	policy := mustCompileAttestation(b, DefaultAttestationSource())
	in := AppraisalInput{Tee: "sample", Claims: sampleClaims("1", "feed"),
		Reference: map[string][]string{"sample_svn": {"1"}, "init_data": {"feed"}}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := policy.Appraise(context.Background(), in); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestCompileAttestationIgnoresNestedHeads(t *testing.T) {
	_, err := CompileAttestation("p", []byte("package policy\nimport rego.v1\nhardware.x := 2\n"))
	if err == nil || !strings.Contains(err.Error(), "defines no trust-claim rule") {
		t.Fatalf("error = %v, want a missing trust-claim rule: hardware.x is not the hardware claim", err)
	}
}

// TestEmulatedHardwareCapped: whatever a policy rates the hardware of
// emulated evidence, it is at most EmulatedHardware and the status at most
// warning; a worse rating stays.
func TestEmulatedHardwareCapped(t *testing.T) {
	for _, tc := range []struct {
		name, src  string
		emulated   bool
		hardware   int
		status     string
		capFinding bool
	}{
		{"affirming policy, emulated", "package policy\nhardware := 2\nexecutables := 3", true, EmulatedHardware, "warning", true},
		{"policy without hardware, emulated", "package policy\nexecutables := 3", true, EmulatedHardware, "warning", true},
		{"contraindicated stays", "package policy\nhardware := 97", true, 97, "contraindicated", false},
		{"genuine untouched", "package policy\nhardware := 2\nexecutables := 3", false, 2, "affirming", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustCompileAttestation(t, []byte(tc.src))
			claims := map[string]any{"snp": map[string]any{"emulated": tc.emulated}}
			got, err := p.Appraise(context.Background(), AppraisalInput{Tee: "snp", Claims: claims})
			if err != nil {
				t.Fatal(err)
			}
			if got.TrustVector["hardware"] != tc.hardware || got.Status != tc.status {
				t.Fatalf("hardware %d status %s, want %d %s", got.TrustVector["hardware"], got.Status, tc.hardware, tc.status)
			}
			found := slices.ContainsFunc(got.Findings, func(f adminapi.Finding) bool {
				return f.Claim == "snp.emulated" && !f.OK && strings.Contains(f.Message, "emulated")
			})
			if found != tc.capFinding {
				t.Fatalf("emulated finding %v, want %v: %+v", found, tc.capFinding, got.Findings)
			}
		})
	}
}

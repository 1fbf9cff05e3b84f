package adminclient

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/adminapi"
)

func TestExplain(t *testing.T) {
	tests := []struct {
		name string
		e    adminapi.AuditEntry
		want string
	}{
		{
			name: "release denied with contraindicated attestation",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindRelease, Session: "3f2a9b7c1d2e4f5a6b7c", Tee: "sample",
				Resource: "default/key/1", Verdict: "deny", Check: "resource-policy", Rule: "allow",
				Detail:      "evidence comes from the unsigned sample TEE",
				TrustVector: map[string]int{"hardware": 97, "executables": 2, "instance-identity": 0},
				Findings: []adminapi.Finding{
					{Claim: "sample.svn", Value: "1", Reference: []any{"2"}},
					{Claim: "sample.launch", Value: "x", Reference: []any{"x"}, OK: true},
				},
			},
			want: `Release of default/key/1 to session 3f2a9b7c... (sample TEE) was DENIED by the resource policy (rule allow): ` +
				`evidence comes from the unsigned sample TEE. The attestation was contraindicated: hardware = 97 (unrecognized). ` +
				`sample.svn "1" is not among the reference values ["2"].`,
		},
		{
			name: "a long reference list is named by its count",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindAttest, Session: "s3", Tee: "snp", Verdict: "warning",
				Check: "attestation-policy", PolicyID: "default",
				TrustVector: map[string]int{"executables": 33, "hardware": 2},
				Findings: []adminapi.Finding{{Claim: "snp.measurement", Value: "aa", ReferenceCount: 768,
					ReferenceName: "snp_launch_measurement", Group: "executables"}},
			},
			want: `Attestation of session s3 (snp TEE) was appraised WARNING by the attestation policy (policy "default"). ` +
				`The attestation was warning: executables = 33 (unrecognized run-time). ` +
				`snp.measurement "aa" is not among the 768 values of reference value "snp_launch_measurement".`,
		},
		{
			name: "release allowed",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindRelease, Session: "abc", Tee: "snp", Resource: "default/key/1",
				Verdict: "allow", Check: "resource-policy", Rule: "allow",
				TrustVector: map[string]int{"hardware": 2, "executables": 2},
				Findings:    []adminapi.Finding{{Claim: "snp.measurement", Value: "aa", Reference: []string{"aa"}, OK: true}},
			},
			want: `Release of default/key/1 to session abc (snp TEE) was ALLOWED by the resource policy (rule allow). The attestation was affirming.`,
		},
		{
			name: "attestation warning lists every non-affirming claim in AR4SI order",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindAttest, Session: "s1", Tee: "snp", Verdict: "warning",
				Check: "attestation-policy", PolicyID: "default", Detail: "firmware is old.",
				TrustVector: map[string]int{"executables": 33, "configuration": 32, "hardware": 2, "vendor-x": 5},
			},
			want: `Attestation of session s1 (snp TEE) was appraised WARNING by the attestation policy (policy "default"): firmware is old. ` +
				`The attestation was warning: configuration = 32 (known vulnerabilities); executables = 33 (unrecognized run-time).`,
		},
		{
			name: "attestation rejected at report-data, scalar reference and message",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindAttest, Session: "s2", Tee: "sample", Verdict: "rejected", Check: "report-data",
				Findings: []adminapi.Finding{{Claim: "report_data", Value: "00", Reference: "ff", Message: "binding hash differs."}},
			},
			want: `Attestation of session s2 (sample TEE) was REJECTED before appraisal at the report-data check ` +
				`(the evidence does not bind the nonce and TEE key it came with). report_data "00" does not match the reference value "ff" (binding hash differs).`,
		},
		{
			name: "a message naming the claim replaces the generated text",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindAttest, Session: "s6", Verdict: "contraindicated", Check: "attestation-policy",
				Findings: []adminapi.Finding{{Claim: "sample.svn", Value: "1", Reference: []any{"2"}, Message: `sample.svn "1" is below the minimum "2".`}},
			},
			want: `Attestation of session s6 was appraised CONTRAINDICATED by the attestation policy. sample.svn "1" is below the minimum "2".`,
		},
		{
			name: "verifier malfunction is shown although its tier is none",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindAttest, Tee: "tdx", Verdict: "none", Check: "evidence",
				TrustVector: map[string]int{"instance-identity": -1},
			},
			want: `Attestation of a client (tdx TEE) was appraised with no trust claims (NONE) while verifying the evidence. ` +
				`The attestation was none: instance-identity = -1 (verifier malfunction).`,
		},
		{
			name: "all-zero vector",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindAttest, Session: "s3", Verdict: "none", Check: "attestation-policy",
				TrustVector: map[string]int{"hardware": 0},
			},
			want: `Attestation of session s3 was appraised with no trust claims (NONE) by the attestation policy. The attestation made no trust claims.`,
		},
		{
			name: "denied although affirming; missing and unreferenced claims; unknown check",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindRelease, Resource: "r/t/x", Verdict: "deny", Check: "quota",
				TrustVector: map[string]int{"hardware": 2},
				Findings: []adminapi.Finding{
					{Claim: "init_data", Reference: []any{"abc"}},
					{Claim: "sample.debug", Value: true},
					{Claim: "policy.ok"},
				},
			},
			want: `Release of r/t/x was DENIED at check "quota". The attestation was affirming: every trust claim is affirming. ` +
				`init_data is missing from the evidence (reference ["abc"]); sample.debug true has no reference value; policy.ok failed.`,
		},
		{
			name: "unknown resource, expired session, out-of-range claim",
			e: adminapi.AuditEntry{
				Kind: adminapi.KindRelease, Session: "s4", Resource: "a/b/c", Verdict: "deny", Check: "unknown-resource",
				TrustVector: map[string]int{"hardware": 300},
			},
			want: `Release of a/b/c to session s4 was DENIED because no such resource is stored. The attestation was contraindicated: hardware = 300.`,
		},
		{
			name: "session expired, no vector",
			e:    adminapi.AuditEntry{Kind: adminapi.KindRelease, Session: "s5", Resource: "a/b/c", Verdict: "deny", Check: "session-expired"},
			want: `Release of a/b/c to session s5 was DENIED because the session had expired.`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Explain(tc.e); got != tc.want {
				t.Errorf("Explain:\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
}

func TestExplainerBorrowsAttestation(t *testing.T) {
	attest := adminapi.AuditEntry{
		Kind: adminapi.KindAttest, Session: "s1", Tee: "sample", Verdict: "contraindicated", Check: "attestation-policy",
		TrustVector: map[string]int{"hardware": 97},
		Findings:    []adminapi.Finding{{Claim: "sample.svn", Value: "1", Reference: []any{"2"}}},
	}
	release := adminapi.AuditEntry{
		Kind: adminapi.KindRelease, Session: "s1", Tee: "sample", Resource: "a/b/c", Verdict: "deny", Check: "resource-policy",
	}
	other := release
	other.Session = "s2"

	var x Explainer
	x.Explain(attest)
	want := `Release of a/b/c to session s1 (sample TEE) was DENIED by the resource policy. ` +
		`The attestation was contraindicated: hardware = 97 (unrecognized). sample.svn "1" is not among the reference values ["2"].`
	if got := x.Explain(release); got != want {
		t.Errorf("release after its attestation:\n got: %s\nwant: %s", got, want)
	}
	if got, want := x.Explain(other), Explain(other); got != want {
		t.Errorf("another session borrowed claims: %s", got)
	}
	// A release that carries its own claims keeps them.
	own := release
	own.TrustVector = map[string]int{"hardware": 2}
	if got := x.Explain(own); !strings.Contains(got, "The attestation was affirming") {
		t.Errorf("release with its own vector: %s", got)
	}
	// Memory stays bounded.
	for i := range maxRemembered + 10 {
		a := attest
		a.Session = fmt.Sprint("s-", i)
		x.Explain(a)
	}
	if len(x.attest) > maxRemembered {
		t.Errorf("remembers %d attestations", len(x.attest))
	}
}

// FuzzExplain explains audit entries decoded from arbitrary JSON, as a
// misbehaving KBS could send them: Explain must never panic and always say
// something.
func FuzzExplain(f *testing.F) {
	f.Add([]byte(`{"kind":"release","session":"abcdefghijklmnop","tee":"sample","resource":"a/b/c","verdict":"deny",` +
		`"check":"resource-policy","trust_vector":{"hardware":97,"x":1000,"executables":-129},` +
		`"findings":[{"claim":"c","value":{"a":[1]},"reference":[null],"message":"m"}]}`))
	f.Add([]byte(`{"kind":"attest","verdict":"none","trust_vector":{"instance-identity":-1}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte("{\"kind\":\"attest\",\"tee\":\"sam\u001b[2Jple\",\"findings\":[{\"claim\":\"sample.svn\",\"value\":\"1\u0007\"}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var e adminapi.AuditEntry
		if json.Unmarshal(data, &e) != nil {
			return
		}
		var x Explainer
		if x.Explain(e) == "" || Explain(e) == "" {
			t.Fatal("empty explanation")
		}
		if got := Explain(e); strings.ContainsFunc(got, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("explanation carries a control character: %q", got)
		}
	})
}

package policy

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/veraison/ear"

	"github.com/cloak-containers/cloak/api/adminapi"
)

//go:embed default_attestation.rego
var defaultAttestation []byte

// DefaultAttestationSource returns the attestation policy a fresh KBS uses.
func DefaultAttestationSource() []byte { return bytes.Clone(defaultAttestation) }

// trustClaims pairs each AR4SI trust claim's Rego rule name (Trustee's
// convention) with its EAR trust-vector name.
var trustClaims = []struct{ rule, claim string }{
	{"instance_identity", "instance-identity"},
	{"configuration", "configuration"},
	{"executables", "executables"},
	{"file_system", "file-system"},
	{"hardware", "hardware"},
	{"runtime_opaque", "runtime-opaque"},
	{"storage_opaque", "storage-opaque"},
	{"sourced_data", "sourced-data"},
}

// attestationQuery collects every trust-claim rule the policy sets plus the
// optional `findings` rule in one evaluation. Undefined rules drop out of the
// comprehensions instead of making the whole query undefined. The `with`
// clauses give each evaluation its own input and data.reference, so one
// prepared query serves concurrent appraisals with different reference values.
var attestationQuery = func() string {
	rules := make([]string, len(trustClaims))
	for i, c := range trustClaims {
		rules[i] = strconv.Quote(c.rule)
	}
	return `result := {
	"claims": {rule: value | some rule in [` + strings.Join(rules, ", ") + `]; value := data.policy[rule]},
	"findings": [f | some f in data.policy.findings],
} with input as input.claims with data.reference as input.reference`
}()

// AttestationPolicy is a compiled attestation appraisal policy. It is safe
// for concurrent use.
type AttestationPolicy struct {
	id    string
	query rego.PreparedEvalQuery
}

// AppraisalInput is what an attestation policy appraises.
type AppraisalInput struct {
	// Tee names the TEE the evidence came from ("sample", "snp", ...).
	Tee string
	// Claims becomes the policy's `input`: {"<tee>": {verifier claims},
	// "init_data": "<hex digest or empty>", "init_data_claims": {...} or nil}.
	Claims map[string]any
	// Reference becomes data.reference: each name maps to its accepted values.
	Reference map[string][]string
}

// Appraisal is the outcome of an attestation policy.
type Appraisal struct {
	PolicyID string `json:"policy_id"`
	// TrustVector maps EAR trust-claim names ("executables", "hardware",
	// ...) to the values the policy set; claims it left undefined are absent.
	TrustVector map[string]int `json:"trust_vector"`
	// Status is the worst AR4SI tier among the set claims: "affirming",
	// "warning", "contraindicated", or "none" when no claim was set.
	Status string `json:"status"`
	// Findings explain the comparisons the policy made (Cloak extension).
	Findings []adminapi.Finding `json:"findings"`
}

// CompileAttestation compiles an attestation policy named id. The source must
// be `package policy` and define at least one trust-claim rule
// (instance_identity, configuration, executables, file_system, hardware,
// runtime_opaque, storage_opaque, sourced_data).
func CompileAttestation(id string, src []byte) (*AttestationPolicy, error) {
	if id == "" {
		return nil, errors.New("attestation policy id is empty: name the policy, e.g. \"default\"")
	}
	mod, err := parse("attestation", src)
	if err != nil {
		return nil, fmt.Errorf("attestation policy %q: %w", id, err)
	}
	if !definesTrustClaim(ruleNames(mod)) {
		return nil, fmt.Errorf("attestation policy %q defines no trust-claim rule: define at least one of "+
			"instance_identity, configuration, executables, file_system, hardware, runtime_opaque, "+
			"storage_opaque, sourced_data (e.g. `default hardware := 97`)", id)
	}
	query, err := prepare(context.Background(), "attestation", attestationQuery, mod)
	if err != nil {
		return nil, fmt.Errorf("attestation policy %q: %w", id, err)
	}
	return &AttestationPolicy{id: id, query: query}, nil
}

func definesTrustClaim(rules []string) bool {
	for _, c := range trustClaims {
		if slices.Contains(rules, c.rule) {
			return true
		}
	}
	return false
}

// ID returns the policy's id.
func (p *AttestationPolicy) ID() string { return p.id }

// Appraise evaluates the policy. It stops early with an error when ctx is
// done.
func (p *AttestationPolicy) Appraise(ctx context.Context, in AppraisalInput) (*Appraisal, error) {
	// input and data.reference must stay objects even when empty, so that
	// policies looking up a name see "undefined" rather than a type error.
	claims, reference := in.Claims, in.Reference
	if claims == nil {
		claims = map[string]any{}
	}
	if reference == nil {
		reference = map[string][]string{}
	}
	rs, err := p.query.Eval(ctx, rego.EvalInput(map[string]any{"claims": claims, "reference": reference}))
	if err != nil {
		return nil, fmt.Errorf("appraise %s with attestation policy %q: %w", evidenceName(in.Tee), p.id, evalError(ctx, err))
	}
	result, err := singleResult(rs)
	if err != nil {
		return nil, fmt.Errorf("attestation policy %q: %w", p.id, err)
	}
	values, _ := result["claims"].(map[string]any)
	findings, err := decodeFindings(result["findings"])
	if err != nil {
		return nil, fmt.Errorf("attestation policy %q: %w", p.id, err)
	}
	if tee, ok := Emulated(claims); ok {
		values, findings = capEmulatedHardware(tee, values, findings)
	}
	vector, status, err := trustVector(values)
	if err != nil {
		return nil, fmt.Errorf("attestation policy %q: %w", p.id, err)
	}
	return &Appraisal{PolicyID: p.id, TrustVector: vector, Status: status, Findings: findings}, nil
}

// EmulatedHardware is the hardware trust claim of emulated evidence at best:
// AR4SI "unsafe" (warning). Emulated evidence is signed by a key on the
// host, so it proves nothing about the hardware, whatever a policy says.
const EmulatedHardware = int(ear.UnsafeHardwareClaim)

// Emulated reports whether appraisal input claims (input of an attestation
// policy, {"<tee>": {...}}) come from an emulated TEE (the verifier's claim
// emulated=true), and which.
func Emulated(claims map[string]any) (string, bool) {
	for tee, c := range claims {
		if m, ok := c.(map[string]any); ok && m["emulated"] == true {
			return tee, true
		}
	}
	return "", false
}

// capEmulatedHardware lowers a hardware claim that would rate emulated
// evidence none or affirming to EmulatedHardware, so its status is at most
// warning, and says so in a finding unless the policy already reported the
// emulation.
func capEmulatedHardware(tee string, values map[string]any, findings []adminapi.Finding) (map[string]any, []adminapi.Finding) {
	if n, ok := values["hardware"].(json.Number); ok {
		if c, err := ear.ToTrustClaim(n); err == nil && c.GetTier() > ear.TrustTierAffirming {
			return values, findings // already warning or worse
		}
	}
	out := make(map[string]any, len(values)+1)
	maps.Copy(out, values)
	out["hardware"] = json.Number(strconv.Itoa(EmulatedHardware))
	claim := tee + ".emulated"
	if !slices.ContainsFunc(findings, func(f adminapi.Finding) bool { return f.Claim == claim }) {
		findings = append(findings, adminapi.Finding{
			Claim: claim, Group: "hardware", Value: true, OK: false,
			Message: fmt.Sprintf("the evidence is emulated: hardware is at most %d (unsafe), so the status is at most warning", EmulatedHardware),
		})
	}
	return out, findings
}

func evidenceName(tee string) string {
	if tee == "" {
		return "evidence"
	}
	return tee + " evidence"
}

// singleResult extracts the `result` binding of a query that always yields
// exactly one result object.
func singleResult(rs rego.ResultSet) (map[string]any, error) {
	if len(rs) != 1 {
		return nil, fmt.Errorf("evaluation produced %d results, want 1", len(rs))
	}
	result, ok := rs[0].Bindings["result"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("evaluation result is %T, want an object", rs[0].Bindings["result"])
	}
	return result, nil
}

// trustVector converts the trust-claim rules' values into an EAR trust
// vector and lets veraison/ear decide the overall tier.
func trustVector(raw any) (map[string]int, string, error) {
	values, _ := raw.(map[string]any)
	vector := make(map[string]int, len(values))
	claims := make(map[string]any, len(values))
	for _, c := range trustClaims {
		v, ok := values[c.rule]
		if !ok {
			continue
		}
		n, isNumber := v.(json.Number)
		if !isNumber {
			return nil, "", fmt.Errorf("rule %s is %s, want an integer trust claim from -128 to 127", c.rule, jsonText(v))
		}
		claim, err := ear.ToTrustClaim(n)
		if err != nil {
			return nil, "", fmt.Errorf("rule %s is %s, want an integer trust claim from -128 to 127: %w", c.rule, n, err)
		}
		vector[c.claim] = int(*claim)
		claims[c.claim] = *claim
	}
	tv, err := ear.ToTrustVector(claims)
	if err != nil {
		return nil, "", fmt.Errorf("build EAR trust vector: %w", err)
	}
	status := ear.TrustTierNone
	appraisal := ear.Appraisal{Status: &status, TrustVector: tv}
	appraisal.UpdateStatusFromTrustVector()
	return vector, status.String(), nil
}

// MaxFindingReferences is the longest list of accepted values a finding
// repeats. A signed bundle holds hundreds of SEV-SNP measurements (one per
// vCPU count and CPU model); repeating them in every finding made an EAR
// token of hundreds of KiB, which no HTTP server accepts in a header. A
// longer list is replaced by its length (Finding.ReferenceCount).
const MaxFindingReferences = 16

// decodeFindings converts the optional `findings` rule (a set or array of
// objects) into audit findings.
func decodeFindings(raw any) ([]adminapi.Finding, error) {
	items, _ := raw.([]any)
	if len(items) == 0 {
		return nil, nil
	}
	findings := make([]adminapi.Finding, 0, len(items))
	for i, item := range items {
		text, err := json.Marshal(item)
		if err != nil {
			return nil, fmt.Errorf("rule findings: element %d: %w", i, err)
		}
		var f adminapi.Finding
		if err := json.Unmarshal(text, &f); err != nil {
			return nil, fmt.Errorf("rule findings: element %d is %s: want an object "+
				`{"claim","group","value","reference","ok","message"}: %w`, i, text, err)
		}
		if f.Claim == "" {
			return nil, fmt.Errorf(`rule findings: element %d is %s: "claim" must name the compared claim`, i, text)
		}
		if refs, ok := f.Reference.([]any); ok && len(refs) > MaxFindingReferences {
			f.Reference, f.ReferenceCount = nil, len(refs)
		}
		findings = append(findings, f)
	}
	return findings, nil
}

// jsonText renders a Rego value for an error message.
func jsonText(v any) string {
	text, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(text)
}

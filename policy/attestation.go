package policy

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/veraison/ear"

	"github.com/cloak-containers/cloak/kbs/adminapi"
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
	PolicyID string
	// TrustVector maps EAR trust-claim names ("executables", "hardware",
	// ...) to the values the policy set; claims it left undefined are absent.
	TrustVector map[string]int
	// Status is the worst AR4SI tier among the set claims: "affirming",
	// "warning", "contraindicated", or "none" when no claim was set.
	Status string
	// Findings explain the comparisons the policy made (Cloak extension).
	Findings []adminapi.Finding
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
	vector, status, err := trustVector(result["claims"])
	if err != nil {
		return nil, fmt.Errorf("attestation policy %q: %w", p.id, err)
	}
	findings, err := decodeFindings(result["findings"])
	if err != nil {
		return nil, fmt.Errorf("attestation policy %q: %w", p.id, err)
	}
	return &Appraisal{PolicyID: p.id, TrustVector: vector, Status: status, Findings: findings}, nil
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

package policy

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/rego"
)

//go:embed default_resource.rego
var defaultResource []byte

// DefaultResourceSource returns the resource policy a fresh KBS uses.
func DefaultResourceSource() []byte { return bytes.Clone(defaultResource) }

// DefaultDenyRule is Decision.Rule when access is denied and no deny_* rule
// of the policy explains why.
const DefaultDenyRule = "default allow := false"

// denyRulePrefix marks the rules that explain a denial (Cloak convention): a
// rule deny_<why> that is true names the reason a request was refused.
const denyRulePrefix = "deny_"

// resourceQuery evaluates `allow`, the optional `reasons` and the deny_*
// rules (spliced in, in source order) in one evaluation. As in Trustee,
// input is the EAR token's claims and data carries the request.
const resourceQuery = `result := {
	"allow": [a | a := data.policy.allow],
	"reasons": [r | some r in data.policy.reasons],
	"denied_by": [name | some name in %s; data.policy[name] == true],
} with input as input.claims with data["resource-path"] as input.path with data.plugin as "resource"`

// ResourcePolicy is a compiled resource release policy. It is safe for
// concurrent use.
type ResourcePolicy struct {
	query rego.PreparedEvalQuery
}

// Decision is a resource policy's verdict on one request.
type Decision struct {
	Allow bool
	// Rule names what decided: "allow" when allowed; otherwise the first
	// deny_* rule (in source order) that holds, or DefaultDenyRule.
	Rule string
	// Reasons are human sentences from the policy's `reasons` rule, or a
	// generic sentence when the policy gives none.
	Reasons []string
}

// CompileResource compiles a resource policy. The source must be
// `package policy` and define the boolean rule `allow`.
func CompileResource(src []byte) (*ResourcePolicy, error) {
	mod, err := parse("resource", src)
	if err != nil {
		return nil, err
	}
	denyRules := []string{} // encodes as a Rego array even when empty
	definesAllow := false
	for _, name := range ruleNames(mod) {
		definesAllow = definesAllow || name == "allow"
		if strings.HasPrefix(name, denyRulePrefix) {
			denyRules = append(denyRules, name)
		}
	}
	if !definesAllow {
		return nil, errors.New("resource policy defines no `allow` rule: add `default allow := false` " +
			"and the rules that set allow to true")
	}
	list, err := json.Marshal(denyRules)
	if err != nil {
		return nil, fmt.Errorf("encode deny rule names: %w", err)
	}
	query, err := prepare(context.Background(), "resource", fmt.Sprintf(resourceQuery, list), mod)
	if err != nil {
		return nil, err
	}
	return &ResourcePolicy{query: query}, nil
}

// Decide evaluates the policy for a request of resourcePath
// ("repo/type/tag") by the holder of an EAR token with tokenClaims. It stops
// early with an error when ctx is done.
func (p *ResourcePolicy) Decide(ctx context.Context, tokenClaims map[string]any, resourcePath string) (Decision, error) {
	rs, err := p.query.Eval(ctx, rego.EvalInput(map[string]any{"claims": tokenClaims, "path": resourcePath}))
	if err != nil {
		return Decision{}, fmt.Errorf("evaluate resource policy for %s: %w", resourcePath, evalError(ctx, err))
	}
	result, err := singleResult(rs)
	if err != nil {
		return Decision{}, fmt.Errorf("resource policy: %w", err)
	}
	allow, err := allowValue(result["allow"])
	if err != nil {
		return Decision{}, fmt.Errorf("resource policy: %w", err)
	}
	reasons, err := stringList("reasons", result["reasons"])
	if err != nil {
		return Decision{}, fmt.Errorf("resource policy: %w", err)
	}
	deniedBy, err := stringList("deny rules", result["denied_by"])
	if err != nil {
		return Decision{}, fmt.Errorf("resource policy: %w", err)
	}

	d := Decision{Allow: allow, Reasons: reasons}
	switch {
	case allow:
		d.Rule = "allow"
		if len(d.Reasons) == 0 {
			d.Reasons = []string{fmt.Sprintf("the resource policy's allow rule holds for %s", resourcePath)}
		}
	case len(deniedBy) > 0:
		d.Rule = deniedBy[0]
	default:
		d.Rule = DefaultDenyRule
	}
	if !allow && len(d.Reasons) == 0 {
		d.Reasons = []string{fmt.Sprintf("no rule of the resource policy allows access to %s", resourcePath)}
	}
	return d, nil
}

// allowValue reads the `allow` rule: undefined counts as false, anything but
// a boolean is a policy bug.
func allowValue(raw any) (bool, error) {
	values, _ := raw.([]any)
	if len(values) == 0 {
		return false, nil
	}
	allow, ok := values[0].(bool)
	if !ok {
		return false, fmt.Errorf("rule allow is %s, want true or false", jsonText(values[0]))
	}
	return allow, nil
}

// stringList reads a list of strings out of an evaluation result.
func stringList(what string, raw any) ([]string, error) {
	values, _ := raw.([]any)
	if len(values) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(values))
	for _, v := range values {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%s contains %s, want only strings", what, jsonText(v))
		}
		out = append(out, s)
	}
	return out, nil
}

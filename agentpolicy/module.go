package agentpolicy

import (
	_ "embed"
	"encoding/json"
	"fmt"
)

// Rules is the generated policies' rule set (rules.rego): every decision
// reads policy_data, which Module appends.
//
//go:embed rules.rego
var Rules string

// Module renders a pod's policy: the rules followed by its policy_data, the
// text that goes into initdata as [data] "policy.rego".
func Module(d Data) ([]byte, error) {
	js, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("agent policy data: %w", err)
	}
	out := make([]byte, 0, len(Rules)+len(js)+32)
	out = append(out, Rules...)
	out = append(out, "\npolicy_data := "...)
	out = append(out, js...)
	out = append(out, '\n')
	return out, nil
}

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
	d = normalized(d)
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

// normalized turns nil lists and maps into empty ones, so that the rules
// compare [] with [] rather than null with [].
func normalized(d Data) Data {
	if d.Sandbox.Sysctls == nil {
		d.Sandbox.Sysctls = map[string]string{}
	}
	cs := make([]Container, len(d.Containers))
	for i, c := range d.Containers {
		if c.Args == nil {
			c.Args = []string{}
		}
		if c.Env == nil {
			c.Env = []string{}
		}
		if c.AdditionalGIDs == nil {
			c.AdditionalGIDs = []uint32{}
		}
		if c.Capabilities == nil {
			c.Capabilities = []string{}
		}
		if c.Mounts == nil {
			c.Mounts = []Mount{}
		}
		if c.Sysctls == nil {
			c.Sysctls = map[string]string{}
		}
		if c.ExecCommands == nil {
			c.ExecCommands = [][]string{}
		}
		cs[i] = c
	}
	d.Containers = cs
	return d
}

package policy

import (
	"bytes"
	"testing"

	"github.com/open-policy-agent/opa/v1/format"
)

// TestDefaultPoliciesFormatted keeps the shipped policies in `opa fmt` form,
// the form admins see when they fetch and edit them.
func TestDefaultPoliciesFormatted(t *testing.T) {
	for name, src := range map[string][]byte{
		"default_attestation.rego": DefaultAttestationSource(),
		"default_resource.rego":    DefaultResourceSource(),
	} {
		formatted, err := format.Source(name, src)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(formatted, src) {
			t.Errorf("%s is not in `opa fmt` form; run: opa fmt -w policy/%s", name, name)
		}
	}
}

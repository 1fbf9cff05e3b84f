package adminclient

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/cloak-containers/cloak/api/adminapi"
)

// Policy is a decoded policy as the KBS stores it.
type Policy struct {
	Type string `json:"type,omitempty"`
	ID   string `json:"policy_id,omitempty"`
	Rego string `json:"rego"`
}

// EncodePolicy builds the wire body: the Rego source in base64url without
// padding, Trustee's encoding. An empty id leaves policy_id out (the
// resource policy has none).
func EncodePolicy(id string, rego []byte) adminapi.PolicyBody {
	return adminapi.PolicyBody{
		Type:     "rego",
		PolicyID: id,
		Policy:   base64.RawURLEncoding.EncodeToString(rego),
	}
}

// DecodePolicy reverses EncodePolicy. Like the KBS it also accepts padded
// and standard base64, since Trustee clients differ.
func DecodePolicy(body adminapi.PolicyBody) (Policy, error) {
	s := strings.TrimRight(body.Policy, "=")
	enc := base64.RawURLEncoding
	if strings.ContainsAny(s, "+/") {
		enc = base64.RawStdEncoding
	}
	rego, err := enc.DecodeString(s)
	if err != nil {
		return Policy{}, fmt.Errorf("policy is not base64: %w", err)
	}
	return Policy{Type: body.Type, ID: body.PolicyID, Rego: string(rego)}, nil
}

package keywrap

import (
	"fmt"
	"strings"

	annotation "github.com/cloak-containers/cloak/api/keyprovider"
)

// MaxParamsSize bounds the provider parameter string ocicrypt passes on.
const MaxParamsSize = 4096

// Params are the provider parameters given after
// "--encryption-key provider:attestation-agent:".
type Params struct {
	KeyPath string // file holding the 32-byte KEK
	KID     string // kbs:///repo/type/tag where the KBS serves the same KEK
}

// ParseParams parses provider parameters in Cloak's form
//
//	keypath=/path/kek;kid=kbs:///repo/type/tag
//
// or in coco_keyprovider's form
//
//	keypath=/path/kek::keyid=kbs:///repo/type/tag[::algorithm=A256GCM]
//
// Unlike coco_keyprovider, both keypath and the key id are required: Cloak
// never invents a KEK or key id, because a KEK the KBS does not serve makes an
// image nobody can run.
func ParseParams(s string) (Params, error) {
	if len(s) > MaxParamsSize {
		return Params{}, fmt.Errorf("provider parameters are %d bytes, more than the %d allowed", len(s), MaxParamsSize)
	}
	sep := ";"
	if strings.Contains(s, "::") {
		sep = "::"
	}
	var p Params
	seen := map[string]bool{}
	for field := range strings.SplitSeq(s, sep) {
		if field == "" {
			continue
		}
		key, value, ok := strings.Cut(field, "=")
		if !ok {
			return Params{}, fmt.Errorf("provider parameter %q: want key=value", field)
		}
		if key == "keyid" {
			key = "kid"
		}
		if seen[key] {
			return Params{}, fmt.Errorf("provider parameter %q given twice", key)
		}
		seen[key] = true
		switch key {
		case "keypath":
			p.KeyPath = value
		case "kid":
			p.KID = value
		case "algorithm":
			if value != annotation.WrapTypeA256GCM {
				return Params{}, fmt.Errorf("provider parameter algorithm=%q: only %s is supported", value, annotation.WrapTypeA256GCM)
			}
		case "sample":
			if value != "false" {
				return Params{}, fmt.Errorf("provider parameter sample=%q: the sample key provider's hard-coded key is not supported; give keypath and kid", value)
			}
		default:
			return Params{}, fmt.Errorf("unknown provider parameter %q (want keypath, kid)", key)
		}
	}
	if p.KeyPath == "" {
		return Params{}, fmt.Errorf("provider parameters: missing keypath=FILE (a file holding the 32-byte KEK)")
	}
	if p.KID == "" {
		return Params{}, fmt.Errorf("provider parameters: missing kid=kbs:///<repository>/<type>/<tag> (where the KBS serves the KEK)")
	}
	return p, nil
}

package server

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/cloak-containers/cloak/api/adminapi"
)

// TestFindingsOfMatchesJSON holds the direct conversion of a token's
// findings to what encoding/json makes of the same JSON, for the findings
// the policy writes and for everything the fast path hands back to JSON.
func TestFindingsOfMatchesJSON(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		fast bool
	}{
		{"none", `null`, true},
		{"empty", `[]`, true},
		{"policy findings", `[{"claim":"sample.svn","group":"executables","value":"1","reference":["1","2"],"ok":true,"message":"svn in reference","reference_name":"sample_svn"},
			{"claim":"snp.measurement","value":{"a":[1,2.5,null]},"reference_count":40,"ok":false}]`, true},
		{"null value", `[{"claim":"c","value":null,"ok":true}]`, true},
		{"audit-only source", `[{"claim":"c","ok":true,"source":{"bundle":"b"}}]`, false},
		{"unknown key", `[{"claim":"c","extra":1}]`, false},
		{"claim not a string", `[{"claim":7,"ok":true}]`, false},
		{"null group", `[{"claim":"c","group":null}]`, false},
		{"fractional count", `[{"claim":"c","reference_count":1.5}]`, false},
		{"huge count", `[{"claim":"c","reference_count":1e300}]`, false},
		{"ok not a bool", `[{"claim":"c","ok":"yes"}]`, false},
		{"not an object", `["c"]`, false},
		{"not a list", `{"claim":"c"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var raw any
			if err := json.Unmarshal([]byte(tc.json), &raw); err != nil {
				t.Fatal(err)
			}
			got, fast := findingsOf(raw)
			if fast != tc.fast {
				t.Fatalf("findingsOf fast path = %v, want %v", fast, tc.fast)
			}
			claims := map[string]any{"submods": map[string]any{"cpu0": map[string]any{
				"ear.veraison.policy-claims": map[string]any{"findings": raw}}}}
			_, viaAppraisal := appraisalOf(claims)
			var want []adminapi.Finding
			_ = json.Unmarshal([]byte(tc.json), &want)
			if !reflect.DeepEqual(viaAppraisal, want) {
				t.Fatalf("appraisalOf findings = %#v, want what encoding/json makes: %#v", viaAppraisal, want)
			}
			if fast && len(want) > 0 && !reflect.DeepEqual(got, want) {
				t.Fatalf("findingsOf = %#v, want %#v", got, want)
			}
		})
	}
}

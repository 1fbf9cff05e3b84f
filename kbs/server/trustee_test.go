package server

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/policy"
)

// kbsClientLifetime is ADMIN_TOKEN_EXPIRY_SECS of Trustee's
// tools/kbs-client/src/lib.rs.
const kbsClientLifetime = 7200 * time.Second

// trusteeAdminToken signs an admin token the way Trustee's kbs-client did in
// sign_admin_token (tools/kbs-client/src/lib.rs, before e908c2d1; its
// integration-tests/src/common.rs still does, adding iss/aud/role):
// jsonwebtoken's Header::new(Algorithm::EdDSA), i.e. {"typ":"JWT","alg":"EdDSA"},
// and claims {"exp": now + lifetime, "iat": now}, no role.
func (k *kbs) trusteeAdminToken(lifetime time.Duration) string {
	k.t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: k.admin}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		k.t.Fatal(err)
	}
	now := k.now.Unix()
	tok, err := jwt.Signed(s).Claims(map[string]any{"exp": now + int64(lifetime/time.Second), "iat": now}).Serialize()
	if err != nil {
		k.t.Fatal(err)
	}
	return tok
}

// kbsClient sends a request as Trustee's kbs-client does: its bearer token,
// its content types.
func (k *kbs) kbsClient(token, method, path, ctype string, body []byte) (int, []byte) {
	k.t.Helper()
	return k.do(k.ts.Client(), method, path, ctype, body, http.Header{"Authorization": {"Bearer " + token}})
}

// sampleMessage is kbs-client's set_sample_rv body: payload is standard
// base64 of {name: value}.
func sampleMessage(typ string, provenance map[string]any) []byte {
	p, _ := json.Marshal(provenance)
	b, _ := json.Marshal(map[string]string{"version": "0.1.0", "type": typ, "payload": base64.StdEncoding.EncodeToString(p)})
	return b
}

// TestTrusteeKBSClientAdministers: a Cloak KBS is administered with Trustee
// kbs-client's token, routes and bodies, and each change is stored,
// readable through Cloak's API and audited.
func TestTrusteeKBSClientAdministers(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	tok := k.trusteeAdminToken(kbsClientLifetime)
	attPolicy := policy.DefaultAttestationSource()
	refs, _ := json.Marshal([]string{"1"})
	for _, tc := range []struct {
		name, method, path, ctype string
		body                      []byte
		action, target, digest    string
		check                     func(t *testing.T)
	}{
		{"set-resource", "POST", adminapi.PathResource + "alice/key/example", "application/octet-stream", []byte("secret"),
			adminapi.ActionResourceSet, "alice/key/example", sha256Hex([]byte("secret")), func(t *testing.T) {
				if v := k.mustAdmin("GET", adminapi.PathAdminResource+"alice/key/example", "", nil); string(v) != "secret" {
					t.Fatalf("stored %q", v)
				}
			}},
		// set_resource_policy: {"policy": URL_SAFE_NO_PAD(policy)}, no type.
		{"set-resource-policy", "POST", adminapi.PathResourcePolicy, "application/json",
			[]byte(`{"policy":"` + base64.RawURLEncoding.EncodeToString([]byte(allowAll)) + `"}`),
			adminapi.ActionResourcePolicySet, "resource-policy", sha256Hex([]byte(allowAll)), func(t *testing.T) {
				var p adminapi.PolicyBody
				json.Unmarshal(k.mustAdmin("GET", adminapi.PathResourcePolicy, "", nil), &p)
				if src, _ := base64.RawURLEncoding.DecodeString(p.Policy); string(src) != allowAll {
					t.Fatalf("resource policy %q", src)
				}
			}},
		// set_attestation_policy: type "rego", policy_id "default_cpu" (its
		// default), policy URL_SAFE_NO_PAD.
		{"set-attestation-policy", "POST", adminapi.PathAttestationPolicy, "application/json",
			[]byte(`{"type":"rego","policy_id":"default_cpu","policy":"` + base64.RawURLEncoding.EncodeToString(attPolicy) + `"}`),
			adminapi.ActionAttestationPolicySet, "default_cpu", sha256Hex(attPolicy), func(t *testing.T) {
				var p adminapi.PolicyBody
				json.Unmarshal(k.mustAdmin("GET", adminapi.PathAttestationPolicy, "", nil), &p)
				if src, _ := base64.RawURLEncoding.DecodeString(p.Policy); p.PolicyID != "default_cpu" || string(src) != string(attPolicy) {
					t.Fatalf("attestation policy %+v", p)
				}
			}},
		// set-sample-reference-value svn 1 --as-integer: {"svn": [1]}.
		{"set-sample-reference-value", "POST", adminapi.PathTrusteeReferenceValue, "application/json", sampleMessage("sample", map[string]any{"svn": []int{1}}),
			adminapi.ActionReferenceValueSet, "svn", sha256Hex(refs), func(t *testing.T) {
				var rv adminapi.ReferenceValues
				json.Unmarshal(k.mustAdmin("GET", adminapi.PathReferenceValues, "", nil), &rv)
				if !slices.Equal(rv.ReferenceValues["svn"], []string{"1"}) {
					t.Fatalf("reference values %+v", rv.ReferenceValues)
				}
				st, b := k.kbsClient(tok, "GET", adminapi.PathTrusteeReferenceValue+"/svn", "application/json", nil)
				if st != 200 || string(b) != `["1"]`+"\n" && string(b) != `["1"]` {
					t.Fatalf("get-reference-value: %d %s", st, b)
				}
			}},
		{"delete-resource", "DELETE", adminapi.PathResource + "alice/key/example", "", nil,
			adminapi.ActionResourceDelete, "alice/key/example", "", func(t *testing.T) {
				st, b := k.adminDo("admin", "GET", adminapi.PathAdminResource+"alice/key/example", "", nil)
				wantProblem(t, st, b, 404, checkUnknownRes)
			}},
	} {
		k.run(t, tc.name, func(t *testing.T) {
			before := k.auditOf("?limit=1000")
			// kbs-client treats anything but 200 as a failure.
			if st, b := k.kbsClient(tok, tc.method, tc.path, tc.ctype, tc.body); st != 200 {
				t.Fatalf("%s %s: %d %s", tc.method, tc.path, st, b)
			}
			tc.check(t)
			page := k.auditOf(fmt.Sprintf("?after=%d", before.Next))
			if len(page.Entries) != 1 {
				t.Fatalf("want exactly one audit entry, got %+v", page.Entries)
			}
			if e := page.Entries[0]; e.Kind != adminapi.KindAdmin || e.Role != adminapi.RoleAdmin || e.Action != tc.action ||
				e.Target != tc.target || e.Digest != tc.digest {
				t.Fatalf("entry %+v, want action %s target %s digest %q", e, tc.action, tc.target, tc.digest)
			}
		})
	}
	k.run(t, "a token outliving kbs-client's is refused", func(t *testing.T) {
		st, b := k.kbsClient(k.trusteeAdminToken(kbsClientLifetime+time.Minute), "GET", adminapi.PathResources, "", nil)
		p := wantProblem(t, st, b, 401, "admin-token-claims")
		if want := "admin token lifetime 2h1m0s exceeds the maximum 2h0m0s; use a shorter exp"; p.Detail != want {
			t.Fatalf("detail %q, want %q", p.Detail, want)
		}
	})
}

// TestTrusteeReferenceValueMessage: Trustee's sample message is checked as
// Cloak's own reference values are, and stores nothing when refused.
func TestTrusteeReferenceValueMessage(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	tok := k.trusteeAdminToken(kbsClientLifetime)
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"known name, badly shaped value", sampleMessage("sample", map[string]any{"sample_svn": "x", "svn": "1"})},
		{"invalid name", sampleMessage("sample", map[string]any{"Bad-Name": "1"})},
		{"not sample", sampleMessage("in-toto", map[string]any{"svn": "1"})},
		{"object value", sampleMessage("sample", map[string]any{"svn": map[string]int{"a": 1}})},
		{"wrong version", []byte(`{"version":"0.2.0","type":"sample","payload":"e30="}`)},
		{"payload not base64", []byte(`{"version":"0.1.0","type":"sample","payload":"!"}`)},
	} {
		k.run(t, tc.name, func(t *testing.T) {
			st, b := k.kbsClient(tok, "POST", adminapi.PathTrusteeReferenceValue, "application/json", tc.body)
			wantProblem(t, st, b, 400, checkReferenceValue)
			var rv adminapi.ReferenceValues
			json.Unmarshal(k.mustAdmin("GET", adminapi.PathReferenceValues, "", nil), &rv)
			if len(rv.ReferenceValues) != 0 {
				t.Fatalf("refused message stored %+v", rv.ReferenceValues)
			}
		})
	}
	k.run(t, "single values, bools and known names", func(t *testing.T) {
		k.mustAdmin("POST", adminapi.PathTrusteeReferenceValue, "application/json",
			sampleMessage("sample", map[string]any{"sample_svn": "2", "debug": false}))
		var rv adminapi.ReferenceValues
		json.Unmarshal(k.mustAdmin("GET", adminapi.PathReferenceValues, "", nil), &rv)
		if !slices.Equal(rv.ReferenceValues["sample_svn"], []string{"2"}) || !slices.Equal(rv.ReferenceValues["debug"], []string{"false"}) {
			t.Fatalf("reference values %+v", rv.ReferenceValues)
		}
	})
	k.run(t, "get an unset name", func(t *testing.T) {
		st, b := k.kbsClient(tok, "GET", adminapi.PathTrusteeReferenceValue+"/nope", "", nil)
		wantProblem(t, st, b, 404, checkReferenceValue)
	})
}

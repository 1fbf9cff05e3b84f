package server

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/kbs/adminauth"
	"github.com/cloak-containers/cloak/measurements/bundle"
	"github.com/cloak-containers/cloak/policy"
)

// startKBSWithAuditor is a KBS with one admin key (k.admin) and one auditor
// key, returned.
func startKBSWithAuditor(t *testing.T) (*kbs, ed25519.PrivateKey) {
	auditorPub, auditor, _ := ed25519.GenerateKey(rand.Reader)
	k := startKBS(t, t.TempDir(), func(c *Config) { c.AuditorKeys = []ed25519.PublicKey{auditorPub} })
	return k, auditor
}

// TestRolesComeFromTheKey: the key that verified a token decides its role;
// the role claim can narrow it, never widen it.
func TestRolesComeFromTheKey(t *testing.T) {
	k, auditor := startKBSWithAuditor(t)
	send := func(key ed25519.PrivateKey, role, method, path string, body []byte) (int, []byte) {
		hdr := http.Header{"Authorization": {"Bearer " + k.adminToken(key, role, -time.Second, time.Minute)}}
		return k.do(k.ts.Client(), method, path, "application/json", body, hdr)
	}
	for _, tc := range []struct {
		name, role, method, path string
		body                     []byte
	}{
		{"list resources", "", "GET", adminapi.PathResources, nil},
		{"read audit", "", "GET", adminapi.PathAudit, nil},
		{"read audit claiming auditor", "auditor", "GET", adminapi.PathAudit, nil},
		{"read resource policy", "", "GET", adminapi.PathResourcePolicy, nil},
	} {
		k.run(t, "auditor key may "+tc.name, func(t *testing.T) {
			if st, b := send(auditor, tc.role, tc.method, tc.path, tc.body); st != 200 {
				t.Fatalf("%s %s: %d %s", tc.method, tc.path, st, b)
			}
		})
	}
	for _, tc := range []struct {
		name, role, method, path string
		body                     []byte
	}{
		{"set a resource", "", "POST", adminapi.PathResource + "a/b/c", []byte("v")},
		{"set the resource policy", "", "POST", adminapi.PathResourcePolicy, policyBody(allowAll)},
		{"set a reference value", "", "POST", adminapi.PathReferenceValues, []byte(`{"name":"svn","values":["1"]}`)},
		{"read a resource value", "", "GET", adminapi.PathAdminResource + "a/b/c", nil},
	} {
		k.run(t, "auditor key may not "+tc.name, func(t *testing.T) {
			st, b := send(auditor, tc.role, tc.method, tc.path, tc.body)
			p := wantProblem(t, st, b, 403, "admin-role")
			if !strings.Contains(p.Detail, "auditor key") {
				t.Fatalf("reason should say the key is an auditor key: %s", p.Detail)
			}
		})
	}
	k.run(t, "auditor key claiming admin is refused", func(t *testing.T) {
		// Even on a read route: the token lies about its key.
		for _, route := range [][2]string{{"GET", adminapi.PathResources}, {"GET", adminapi.PathAudit}, {"POST", adminapi.PathResourcePolicy}} {
			st, b := send(auditor, "admin", route[0], route[1], policyBody(allowAll))
			p := wantProblem(t, st, b, 403, "admin-role")
			if !strings.Contains(p.Detail, "auditor key") {
				t.Fatalf("reason should say the key is an auditor key: %s", p.Detail)
			}
		}
	})
	k.run(t, "admin key without role claim may write", func(t *testing.T) {
		if st, b := send(k.admin, "", "POST", adminapi.PathResource+"a/b/c", []byte("v")); st != 200 {
			t.Fatalf("no-role admin write: %d %s", st, b)
		}
		if st, b := send(k.admin, "", "POST", adminapi.PathResourcePolicy, policyBody(allowAll)); st != 200 {
			t.Fatalf("no-role admin policy set: %d %s", st, b)
		}
	})
	k.run(t, "admin key narrowed to auditor may not write", func(t *testing.T) {
		st, b := send(k.admin, "auditor", "POST", adminapi.PathResourcePolicy, policyBody(allowAll))
		p := wantProblem(t, st, b, 403, "admin-role")
		if !strings.Contains(p.Detail, "narrows") {
			t.Fatalf("reason should say the token narrowed its role: %s", p.Detail)
		}
	})
}

// TestAuditorOnlyKBS: auditor keys alone turn the admin API on, read-only.
func TestAuditorOnlyKBS(t *testing.T) {
	auditorPub, auditor, _ := ed25519.GenerateKey(rand.Reader)
	k := startKBS(t, t.TempDir(), func(c *Config) { c.AdminKeys, c.AuditorKeys = nil, []ed25519.PublicKey{auditorPub} })
	hdr := http.Header{"Authorization": {"Bearer " + k.adminToken(auditor, "", -time.Second, time.Minute)}}
	if st, b := k.do(k.ts.Client(), "GET", adminapi.PathAudit, "", nil, hdr); st != 200 {
		t.Fatalf("auditor read: %d %s", st, b)
	}
	st, b := k.do(k.ts.Client(), "POST", adminapi.PathResource+"a/b/c", "", []byte("v"), hdr)
	wantProblem(t, st, b, 403, "admin-role")
}

func (k *kbs) auditOf(query string) adminapi.AuditPage {
	k.t.Helper()
	var page adminapi.AuditPage
	if err := json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+query, "", nil), &page); err != nil {
		k.t.Fatal(err)
	}
	return page
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestAdminChangesAreAudited: each admin write is one audit entry naming
// the key, the action, the target and the new value's digest, never the
// value; reads and refused writes are none.
func TestAdminChangesAreAudited(t *testing.T) {
	_, signer, _ := ed25519.GenerateKey(rand.Reader)
	k := startKBS(t, t.TempDir(), func(c *Config) { c.ReferenceValueSigners = []crypto.PublicKey{signer.Public()} })
	fp := adminauth.Fingerprint(k.admin.Public().(ed25519.PublicKey))
	const secret = "plaintext-secret-value"
	attPolicy := []byte(policy.DefaultAttestationSource())
	refs, _ := json.Marshal([]string{"1", "2"})
	imported := signBundle(t, signer, refDoc(bundle.Value{Name: "sample_svn", Value: "3"}))
	for _, tc := range []struct {
		name, method, path, ctype string
		body                      []byte
		action, target, digest    string
	}{
		{"resource set", "POST", adminapi.PathResource + "a/b/c", "", []byte(secret), adminapi.ActionResourceSet, "a/b/c", sha256Hex([]byte(secret))},
		{"resource delete", "DELETE", adminapi.PathResource + "a/b/c", "", nil, adminapi.ActionResourceDelete, "a/b/c", ""},
		{"resource policy set", "POST", adminapi.PathResourcePolicy, "application/json", policyBody(allowAll), adminapi.ActionResourcePolicySet, "resource-policy", sha256Hex([]byte(allowAll))},
		{"attestation policy set", "POST", adminapi.PathAttestationPolicy, "application/json",
			[]byte(`{"policy_id":"strict","policy":"` + base64.RawURLEncoding.EncodeToString(attPolicy) + `"}`),
			adminapi.ActionAttestationPolicySet, "strict", sha256Hex(attPolicy)},
		{"reference value set", "POST", adminapi.PathReferenceValues, "application/json", []byte(`{"name":"sample_svn","values":["1","2"]}`),
			adminapi.ActionReferenceValueSet, "sample_svn", sha256Hex(refs)},
		{"reference value delete", "DELETE", adminapi.PathReferenceValues + "/sample_svn", "", nil,
			adminapi.ActionReferenceValueDelete, "sample_svn", ""},
		{"reference values import", "POST", adminapi.PathReferenceImport, adminapi.ContentTypeCOSE, imported,
			adminapi.ActionReferenceImport, "", sha256Hex(imported)},
	} {
		k.run(t, tc.name, func(t *testing.T) {
			before := k.auditOf("?limit=1000")
			k.mustAdmin(tc.method, tc.path, tc.ctype, tc.body)
			// Reads of what was written add nothing.
			k.mustAdmin("GET", adminapi.PathResources, "", nil)
			page := k.auditOf(fmt.Sprintf("?after=%d", before.Next))
			if len(page.Entries) != 1 {
				t.Fatalf("want exactly one entry, got %+v", page.Entries)
			}
			e := page.Entries[0]
			if e.Kind != adminapi.KindAdmin || e.Key != fp || e.Role != adminapi.RoleAdmin || e.Action != tc.action ||
				e.Digest != tc.digest || e.Verdict != adminapi.VerdictApplied {
				t.Fatalf("entry %+v, want action %s digest %q by key %s", e, tc.action, tc.digest, fp)
			}
			if tc.target != "" && e.Target != tc.target || e.Target == "" {
				t.Fatalf("entry target %q, want %q", e.Target, tc.target)
			}
			raw, _ := json.Marshal(e)
			if strings.Contains(string(raw), secret) {
				t.Fatalf("entry holds the value: %s", raw)
			}
		})
	}
	k.run(t, "a refused write is no change", func(t *testing.T) {
		before := k.auditOf("?limit=1000")
		st, b := k.adminDo("admin", "POST", adminapi.PathResourcePolicy, "application/json", policyBody("package policy\nallow if {"))
		wantProblem(t, st, b, 400, "resource-policy")
		if page := k.auditOf(fmt.Sprintf("?after=%d", before.Next)); len(page.Entries) != 0 {
			t.Fatalf("refused write audited: %+v", page.Entries)
		}
	})
	k.run(t, "kind filter", func(t *testing.T) {
		g := k.ecGuest()
		g.mustAttest()
		g.resource("a/b/c", "")
		admin := k.auditOf("?kind=admin")
		if len(admin.Entries) != 7 {
			t.Fatalf("want the 7 admin entries, got %d", len(admin.Entries))
		}
		for _, e := range admin.Entries {
			if e.Kind != adminapi.KindAdmin {
				t.Fatalf("kind=admin returned %+v", e)
			}
		}
		release := k.auditOf("?kind=release")
		attest := k.auditOf("?kind=attest")
		if len(release.Entries) != 1 || len(attest.Entries) != 1 {
			t.Fatalf("release %+v attest %+v", release.Entries, attest.Entries)
		}
		// The release joins its attestation by session.
		if s := release.Entries[0].Session; s == "" || s != attest.Entries[0].Session {
			t.Fatalf("release session %q, attest session %q", s, attest.Entries[0].Session)
		}
		// ... by a digest: the session id is the guest's cookie, and an
		// auditor must not be able to present it.
		u, _ := url.Parse(k.ts.URL + "/kbs/v0/resource")
		cookies := g.c.Jar.Cookies(u)
		if len(cookies) == 0 {
			t.Fatal("the guest holds no session cookie")
		}
		log := string(k.mustAdmin("GET", adminapi.PathAudit+"?limit=1000", "", nil))
		for _, c := range cookies {
			if strings.Contains(log, c.Value) {
				t.Fatalf("the audit log holds the session cookie %s=%s", c.Name, c.Value)
			}
			if want := auditSessionRef(c.Value); release.Entries[0].Session != want {
				t.Fatalf("audit session %q, want the digest of the cookie %q", release.Entries[0].Session, want)
			}
		}
		if release.Next != attest.Entries[0].Seq+1 {
			t.Fatalf("next %d should be the last entry examined", release.Next)
		}
		st, b := k.adminDo("admin", "GET", adminapi.PathAudit+"?kind=nope", "", nil)
		wantProblem(t, st, b, 400, "body")
	})
}

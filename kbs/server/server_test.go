package server

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/internal/version"
	"github.com/cloak-containers/cloak/policy"
)

func TestHappyPath(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	k.allowAllAndPut("default/key/one", "plaintext-1")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	guests := map[string]*guest{
		"ec":  k.ecGuest(),
		"rsa": k.guest(rsaKey, &rsaKey.PublicKey, "RSA-OAEP-256"),
	}
	for name, g := range guests {
		g.mustAttest()
		st, pt := g.resource("default/key/one", "")
		if st != 200 || string(pt) != "plaintext-1" {
			t.Fatalf("%s cookie fetch: %d %q", name, st, pt)
		}
		// Bearer from a client without the session cookie.
		fresh := k.guest(g.key, publicOf(g.key), "")
		st, pt = fresh.resource("default/key/one", g.token)
		if st != 200 || string(pt) != "plaintext-1" {
			t.Fatalf("%s bearer fetch: %d %q", name, st, pt)
		}
	}
}

func publicOf(key any) any {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return &k.PublicKey
	case *ecdsa.PrivateKey:
		return &k.PublicKey
	}
	return nil
}

func TestDefaultPolicyRefusesSample(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	k.mustAdmin("POST", adminapi.PathResource+"default/key/one", "", []byte("v"))
	g := k.ecGuest()
	g.mustAttest()
	st, b := g.resource("default/key/one", "")
	p := wantProblem(t, st, b, 403, "resource-policy")
	if !strings.Contains(p.Detail, "sample") {
		t.Fatalf("deny reason should mention sample: %s", p.Detail)
	}
	// Unknown resources are also 403 under a denying policy: no enumeration.
	st, b = g.resource("default/key/missing", "")
	wantProblem(t, st, b, 403, "resource-policy")
}

func TestAttestFailures(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	g := k.ecGuest()

	k.run(t, "wrong nonce", func(t *testing.T) {
		g.auth()
		st, b := g.attest(g.attestBody("AAAA" + g.nonce[4:]))
		wantProblem(t, st, b, 401, "nonce")
	})
	k.run(t, "replay same session", func(t *testing.T) {
		g.auth()
		body := g.attestBody(g.nonce)
		if st, b := g.attest(body); st != 200 {
			t.Fatalf("first attest %d %s", st, b)
		}
		st, b := g.attest(body)
		wantProblem(t, st, b, 401, "nonce-used")
	})
	k.run(t, "replay in new session", func(t *testing.T) {
		g.auth()
		old := g.attestBody(g.nonce)
		g.auth()
		st, b := g.attest(old)
		wantProblem(t, st, b, 401, "nonce")
	})
	k.run(t, "report data mismatch", func(t *testing.T) {
		g.auth()
		var att kbstypes.Attestation
		json.Unmarshal(g.attestBody(g.nonce), &att)
		att.TeeEvidence.AdditionalEvidence = "changed after binding"
		body, _ := json.Marshal(att)
		st, b := g.attest(body)
		p := wantProblem(t, st, b, 401, "report-data")
		if !strings.Contains(p.Detail, "expected") || !strings.Contains(p.Detail, "got") {
			t.Fatalf("detail should show both values: %s", p.Detail)
		}
	})
	k.run(t, "expired session", func(t *testing.T) {
		skipOnDatabaseClock(t)
		g.auth()
		k.now = k.now.Add(6 * time.Minute)
		defer func() { k.now = k.now.Add(-6 * time.Minute) }()
		st, b := g.attest(g.attestBody(g.nonce))
		wantProblem(t, st, b, 401, "session-expired")
		var page adminapi.AuditPage
		json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?limit=1000", "", nil), &page)
		last := page.Entries[len(page.Entries)-1]
		if last.Verdict != "rejected" || last.Check != "session-expired" {
			t.Fatalf("expired attest not audited: %+v", last)
		}
	})
	k.run(t, "no session", func(t *testing.T) {
		st, b := k.do(k.ts.Client(), "POST", "/kbs/v0/attest", "application/json", g.attestBody("x"), nil)
		wantProblem(t, st, b, 401, "session")
	})
	k.run(t, "bad json names the field", func(t *testing.T) {
		g.auth()
		st, b := g.attest([]byte(`{"runtime-data":{"nonce":5}}`))
		p := wantProblem(t, st, b, 400, "body")
		if !strings.Contains(p.Detail, "runtime-data.nonce") {
			t.Fatalf("detail should name the field: %s", p.Detail)
		}
		st, b = g.attest([]byte(`{"runtime-data":`))
		wantProblem(t, st, b, 400, "body")
	})
	k.run(t, "bad tee key", func(t *testing.T) {
		g.auth()
		var att kbstypes.Attestation
		json.Unmarshal(g.attestBody(g.nonce), &att)
		att.RuntimeData.TeePubKey = json.RawMessage(`{"kty":"oct","k":"AAAA"}`)
		body, _ := json.Marshal(att)
		st, b := g.attest(body)
		wantProblem(t, st, b, 400, "tee-pubkey")
	})
	k.run(t, "wrong content type", func(t *testing.T) {
		st, b := k.do(g.c, "POST", "/kbs/v0/auth", "text/plain", []byte(`{}`), nil)
		wantProblem(t, st, b, 415, "content-type")
	})
	k.run(t, "bad version", func(t *testing.T) {
		st, b := k.do(g.c, "POST", "/kbs/v0/auth", "application/json", []byte(`{"version":"1.0.0","tee":"sample"}`), nil)
		wantProblem(t, st, b, 400, "version")
		st, _ = k.do(g.c, "POST", "/kbs/v0/auth", "application/json", []byte(`{"version":"0.1.0","tee":"sample","extra-params":"","extra":1}`), nil)
		if st != 200 {
			t.Fatalf("0.1.0 with string extra-params and extra fields refused: %d", st)
		}
		for _, v := range []string{"0.5.0", "0.0.9", "0.4", "00.4.0", ""} {
			st, b := k.do(g.c, "POST", "/kbs/v0/auth", "application/json", []byte(`{"version":"`+v+`","tee":"sample"}`), nil)
			wantProblem(t, st, b, 400, "version")
		}
	})
	k.run(t, "unknown tee", func(t *testing.T) {
		st, b := k.do(g.c, "POST", "/kbs/v0/auth", "application/json", []byte(`{"version":"0.4.0","tee":"nope"}`), nil)
		wantProblem(t, st, b, 400, "tee")
	})
	k.run(t, "oversized body", func(t *testing.T) {
		big := []byte(`{"version":"` + strings.Repeat("x", kbstypes.MaxRequestBody) + `"}`)
		st, b := k.do(g.c, "POST", "/kbs/v0/auth", "application/json", big, nil)
		wantProblem(t, st, b, 413, "body-too-large")
	})
}

func TestResourceRequests(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	k.allowAllAndPut("default/key/one", "v1")
	g := k.ecGuest()

	st, b := g.resource("default/key/one", "")
	wantProblem(t, st, b, 401, "session")
	g.auth()
	st, b = g.resource("default/key/one", "")
	wantProblem(t, st, b, 401, "not-attested")
	g.mustAttest()

	for _, path := range []string{"../key/one", "default/%2e%2e/one", "default/key/one/extra", "default/key/%2Fone", "default//one"} {
		st, b := g.resource(path, "")
		wantProblem(t, st, b, 400, "resource-path")
	}
	st, b = g.resource("default/key/missing", "")
	wantProblem(t, st, b, 404, "unknown-resource")

	other := startKBS(t, t.TempDir(), nil)
	og := other.ecGuest()
	og.mustAttest()
	tokens := map[string]string{
		"other key": og.token,
		"tampered":  g.token[:len(g.token)-4] + "AAAA",
		"garbage":   "not.a.token",
	}
	checks := map[string]string{"other key": "token-signature", "tampered": "token-signature", "garbage": "token"}
	for name, tok := range tokens {
		st, b := g.resource("default/key/one", tok)
		wantProblem(t, st, b, 401, checks[name])
	}
	k.now = k.now.Add(10 * time.Minute)
	st, b = g.resource("default/key/one", g.token)
	wantProblem(t, st, b, 401, "token-expired")
	if suitePG == nil { // on PostgreSQL the database's clock expires sessions
		st, b = g.resource("default/key/one", "")
		wantProblem(t, st, b, 401, "session-expired")
	}
}

func TestAdminAuth(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	c := k.ts.Client()
	send := func(tok, method, path string) (int, []byte) {
		hdr := http.Header{}
		if tok != "" {
			hdr.Set("Authorization", "Bearer "+tok)
		}
		return k.do(c, method, path, "application/json", policyBody(allowAll), hdr)
	}
	st, b := send("", "GET", adminapi.PathResources)
	wantProblem(t, st, b, 401, "admin-token-missing")
	st, b = send(k.adminToken(stranger, "admin", -time.Second, time.Minute), "GET", adminapi.PathResources)
	wantProblem(t, st, b, 401, "admin-token-signature")
	st, b = send(k.adminToken(k.admin, "admin", -time.Hour, -10*time.Minute), "GET", adminapi.PathResources)
	wantProblem(t, st, b, 401, "admin-token-expired")
	st, b = send(k.adminToken(k.admin, "auditor", -time.Second, time.Minute), "POST", adminapi.PathResourcePolicy)
	wantProblem(t, st, b, 403, "admin-role")
	if st, b := send(k.adminToken(k.admin, "auditor", -time.Second, time.Minute), "GET", adminapi.PathResourcePolicy); st != 200 {
		t.Fatalf("auditor read: %d %s", st, b)
	}

	off := startKBS(t, t.TempDir(), func(c *Config) { c.AdminKeys = nil })
	st, b = off.adminDo("admin", "GET", adminapi.PathResources, "", nil)
	p := wantProblem(t, st, b, 403, "admin-disabled")
	if !strings.Contains(p.Detail, "--admin-public-key") {
		t.Fatalf("detail should say how to enable: %s", p.Detail)
	}
}

func TestAdminAPI(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	st, b := k.adminDo("admin", "POST", adminapi.PathResourcePolicy, "application/json", policyBody("package policy\nallow if {"))
	wantProblem(t, st, b, 400, "resource-policy")
	st, b = k.adminDo("admin", "POST", adminapi.PathAttestationPolicy, "application/json", policyBody("package nope"))
	wantProblem(t, st, b, 400, "attestation-policy")
	st, b = k.adminDo("admin", "POST", adminapi.PathReferenceValues, "application/json", []byte(`{"name":"Bad-Name","values":["1"]}`))
	wantProblem(t, st, b, 400, "reference-value")
	st, b = k.adminDo("admin", "POST", adminapi.PathReferenceValues, "application/json", []byte(`{"name":"svn","custom":true,"values":["`+strings.Repeat("1", 1025)+`"]}`))
	wantProblem(t, st, b, 400, "reference-value")
	st, b = k.adminDo("admin", "DELETE", adminapi.PathResource+"a/b/c", "", nil)
	wantProblem(t, st, b, 404, "unknown-resource")
	k.mustAdmin("POST", adminapi.PathResource+"a/b/c", "", []byte("val"))
	if got := k.mustAdmin("GET", adminapi.PathAdminResource+"a/b/c", "", nil); string(got) != "val" {
		t.Fatalf("admin get = %q", got)
	}
	k.mustAdmin("DELETE", adminapi.PathResource+"a/b/c", "", nil)
	st, b = k.adminDo("admin", "GET", "/kbs/v0/nope", "", nil)
	wantProblem(t, st, b, 404, "route")
	st, b = k.adminDo("admin", "PUT", adminapi.PathResourcePolicy, "", nil)
	wantProblem(t, st, b, 405, "route")
	st, b = k.adminDo("admin", "GET", adminapi.PathAudit+"?limit=5000", "", nil)
	wantProblem(t, st, b, 400, "body")
}

// Restart keeps resources, policies, reference values and the audit log, and
// tokens issued before the restart stay valid.
func TestRestartPersistence(t *testing.T) {
	dir := t.TempDir()
	k := startKBS(t, dir, nil)
	k.allowAllAndPut("default/key/one", "persisted")
	k.mustAdmin("POST", adminapi.PathReferenceValues, "application/json", []byte(`{"name":"svn","custom":true,"values":["1"]}`))
	custom, _ := json.Marshal(adminapi.PolicyBody{Type: "rego", PolicyID: "custom", Policy: base64.StdEncoding.EncodeToString(policy.DefaultAttestationSource())})
	k.mustAdmin("POST", adminapi.PathAttestationPolicy, "application/json", custom)
	g := k.ecGuest()
	g.mustAttest()
	k.ts.Close()
	if err := k.srv.Close(); err != nil {
		t.Fatal(err)
	}

	k2 := startKBS(t, dir, func(c *Config) { c.AdminKeys = []ed25519.PublicKey{k.admin.Public().(ed25519.PublicKey)} })
	k2.admin = k.admin
	g.k = k2
	st, pt := g.resource("default/key/one", g.token)
	if st != 200 || string(pt) != "persisted" {
		t.Fatalf("after restart: %d %q", st, pt)
	}
	var rv adminapi.ReferenceValues
	json.Unmarshal(k2.mustAdmin("GET", adminapi.PathReferenceValues, "", nil), &rv)
	if len(rv.ReferenceValues["svn"]) != 1 {
		t.Fatalf("reference values lost: %+v", rv)
	}
	var page adminapi.AuditPage
	json.Unmarshal(k2.mustAdmin("GET", adminapi.PathAudit+"?kind=attest", "", nil), &page)
	if len(page.Entries) != 1 || page.Entries[0].Check == "" || page.Entries[0].TokenID == "" {
		t.Fatalf("attest audit after restart: %+v", page)
	}
	attest := page.Entries[0]
	json.Unmarshal(k2.mustAdmin("GET", adminapi.PathAudit+"?kind=release", "", nil), &page)
	// The release by a token issued before the restart joins its attestation.
	if len(page.Entries) != 1 || page.Entries[0].TokenID != attest.TokenID {
		t.Fatalf("release audit after restart: %+v, attest token %s", page, attest.TokenID)
	}
	var pb adminapi.PolicyBody
	json.Unmarshal(k2.mustAdmin("GET", adminapi.PathResourcePolicy, "", nil), &pb)
	if src, _ := base64.RawURLEncoding.DecodeString(pb.Policy); string(src) != allowAll || pb.Type != "rego" {
		t.Fatalf("resource policy after restart: %+v", pb)
	}
	json.Unmarshal(k2.mustAdmin("GET", adminapi.PathAttestationPolicy, "", nil), &pb)
	if pb.PolicyID != "custom" {
		t.Fatalf("attestation policy after restart: %+v", pb)
	}
	g.mustAttest()
	json.Unmarshal(k2.mustAdmin("GET", adminapi.PathAudit+"?after="+strconv.FormatUint(page.Next, 10), "", nil), &page)
	if len(page.Entries) != 1 || page.Entries[0].PolicyID != "custom" {
		t.Fatalf("restarted KBS does not appraise with the stored attestation policy: %+v", page.Entries)
	}
}

func TestCorruptedDatabase(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "kbs.db"), []byte(strings.Repeat("junk", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), "corrupted") {
		t.Fatalf("New on corrupted db: %v", err)
	}
}

func TestAuditAndMetrics(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	k.mustAdmin("POST", adminapi.PathResource+"default/key/one", "", []byte("v"))
	g := k.ecGuest()
	g.auth()
	g.attest(g.attestBody("wrong"))
	g.mustAttest()
	g.resource("default/key/one", "")

	var page adminapi.AuditPage
	// Entry 1 is the admin change that stored the resource.
	json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?after=1&limit=10", "", nil), &page)
	if len(page.Entries) != 3 {
		t.Fatalf("audit entries: %+v", page.Entries)
	}
	rej, ok, rel := page.Entries[0], page.Entries[1], page.Entries[2]
	if rej.Verdict != "rejected" || rej.Check != "nonce" {
		t.Fatalf("rejected entry %+v", rej)
	}
	if ok.Kind != adminapi.KindAttest || ok.Check != "attestation-policy" || ok.PolicyID == "" || ok.Verdict == "rejected" {
		t.Fatalf("attest entry %+v", ok)
	}
	if rel.Kind != adminapi.KindRelease || rel.Verdict != "deny" || rel.Check != "resource-policy" || rel.Rule == "" || rel.Resource != "default/key/one" {
		t.Fatalf("release entry %+v", rel)
	}
	// The release entry carries the appraisal it relied on: no reference
	// value for sample_svn was set, so hardware is contraindicated and the
	// svn finding failed.
	if rel.TrustVector["hardware"] != 97 || len(rel.Findings) == 0 {
		t.Fatalf("release entry lacks the appraisal: %+v", rel)
	}
	var svn *adminapi.Finding
	for i := range rel.Findings {
		if rel.Findings[i].Claim == "sample.svn" {
			svn = &rel.Findings[i]
		}
	}
	if svn == nil || svn.OK || svn.Group != "hardware" {
		t.Fatalf("release entry findings %+v: want a failed sample.svn finding", rel.Findings)
	}
	if page.Next != rel.Seq {
		t.Fatalf("next = %d, want %d", page.Next, rel.Seq)
	}
	json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?after="+"3", "", nil), &page)
	if len(page.Entries) != 1 || page.Entries[0].Seq != 4 {
		t.Fatalf("paged audit: %+v", page)
	}

	st, b := k.do(k.ts.Client(), "GET", "/metrics", "", nil, nil)
	for _, want := range []string{
		`kbs_attestations_total{tee="sample",verdict="rejected"} 1`,
		`kbs_releases_total{tee="sample",verdict="deny"} 1`,
		`kbs_http_request_duration_seconds_count{code="200",route="POST /kbs/v0/auth"}`,
		`kbs_build_info{commit="` + version.Commit + `",goversion="` + runtime.Version() + `",version="` + version.Version + `"} 1`,
	} {
		if st != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("metrics lack %q:\n%s", want, b)
		}
	}
	st, b = k.do(k.ts.Client(), "GET", "/healthz", "", nil, nil)
	if st != 200 || strings.TrimSpace(string(b)) != "ok" {
		t.Fatalf("healthz: %d %q", st, b)
	}
}

func TestSessionTableFull(t *testing.T) {
	k := startKBS(t, t.TempDir(), func(c *Config) { c.MaxSessions = 1 })
	k.ecGuest().auth()
	st, b := k.do(k.ts.Client(), "POST", "/kbs/v0/auth", "application/json", []byte(`{"version":"0.4.0","tee":"sample"}`), nil)
	wantProblem(t, st, b, 503, "busy")
}

// A signed bundle brings hundreds of accepted values for one claim (SEV-SNP
// measurements for every vCPU count and CPU model). The token must not repeat
// them: it travels in an Authorization header, which the KBS itself caps at
// 64 KiB (a token of hundreds of KiB was refused with 431 in e2e).
func TestManyReferenceValuesKeepTokenSmall(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	k.allowAllAndPut("default/key/one", "plaintext-1")
	values := make([]string, 800)
	for i := range values {
		values[i] = strings.Repeat("0", 90) + strconv.Itoa(100000+i)
	}
	values[799] = "1" // the sample guest's svn
	body, _ := json.Marshal(map[string]any{"name": "sample_svn", "values": values})
	k.mustAdmin("POST", adminapi.PathReferenceValues, "application/json", body)

	g := k.ecGuest()
	g.mustAttest()
	if len(g.token) > 16<<10 {
		t.Fatalf("token is %d bytes with 800 reference values; it must not carry them", len(g.token))
	}
	fresh := k.guest(g.key, publicOf(g.key), "")
	if st, pt := fresh.resource("default/key/one", g.token); st != 200 || string(pt) != "plaintext-1" {
		t.Fatalf("bearer fetch: %d %q", st, pt)
	}

	var page adminapi.AuditPage
	json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?limit=10", "", nil), &page)
	var svn *adminapi.Finding
	for _, e := range page.Entries {
		for i := range e.Findings {
			if e.Kind == adminapi.KindAttest && e.Findings[i].Claim == "sample.svn" {
				svn = &e.Findings[i]
			}
		}
	}
	if svn == nil {
		t.Fatalf("no sample.svn finding in %+v", page.Entries)
	}
	if !svn.OK || svn.Reference != nil || svn.ReferenceCount != 800 ||
		svn.Message != `sample.svn "1" is among the 800 values of reference value "sample_svn"` {
		t.Fatalf("finding %+v: want ok, no reference list, count 800 and a message naming the count", *svn)
	}
}

package server

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

// kbs is a server under test behind a loopback TLS listener.
type kbs struct {
	t     *testing.T
	srv   *Server
	ts    *httptest.Server
	admin ed25519.PrivateKey
	now   time.Time
}

func startKBS(t *testing.T, dir string, mutate func(*Config)) *kbs {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := &kbs{t: t, admin: priv, now: time.Now()}
	cfg := Config{DataDir: dir, AdminKeys: []ed25519.PublicKey{pub}, Now: func() time.Time { return k.now }}
	cfg.Storage = suiteStorage(t, dir)
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	k.srv = srv
	k.ts = httptest.NewTLSServer(srv.Handler())
	t.Cleanup(func() { k.ts.Close(); srv.Close() })
	return k
}

// run is t.Run with the kbs's helpers reporting to the subtest.
func (k *kbs) run(t *testing.T, name string, fn func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		parent := k.t
		k.t = t
		defer func() { k.t = parent }()
		fn(t)
	})
}

// guest is a test-only protocol client: one cookie jar, one TEE key.
type guest struct {
	k     *kbs
	c     *http.Client
	key   any             // private key
	jwk   json.RawMessage // public JWK
	nonce string
	token string
}

func (k *kbs) guest(key any, pub any, alg string) *guest {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: k.ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}}}
	k.t.Cleanup(c.CloseIdleConnections)
	jwk, err := json.Marshal(jose.JSONWebKey{Key: pub, Algorithm: alg})
	if err != nil {
		k.t.Fatal(err)
	}
	return &guest{k: k, c: c, key: key, jwk: jwk}
}

func (k *kbs) ecGuest() *guest {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return k.guest(key, &key.PublicKey, "ECDH-ES+A256KW")
}

// do sends a request and decodes a JSON answer into out (if not nil and 2xx);
// it returns the status and the raw body.
func (k *kbs) do(c *http.Client, method, path, ctype string, body []byte, hdr http.Header) (int, []byte) {
	k.t.Helper()
	req, err := http.NewRequest(method, k.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		k.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for h, v := range hdr {
		req.Header[h] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		k.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (g *guest) auth() {
	g.k.t.Helper()
	st, b := g.k.do(g.c, "POST", "/kbs/v0/auth", "application/json", []byte(`{"version":"0.4.0","tee":"sample","extra-params":{}}`), nil)
	if st != 200 {
		g.k.t.Fatalf("auth: %d %s", st, b)
	}
	var ch kbstypes.Challenge
	if err := json.Unmarshal(b, &ch); err != nil {
		g.k.t.Fatal(err)
	}
	g.nonce = ch.Nonce
}

// attestBody builds an attestation over nonce with correct sample evidence.
func (g *guest) attestBody(nonce string) []byte {
	rd, err := kbstypes.RuntimeDataDigest("", nonce, g.jwk)
	if err != nil {
		g.k.t.Fatal(err)
	}
	ev, _ := json.Marshal(kbstypes.SampleEvidence{SVN: "1", ReportData: base64.StdEncoding.EncodeToString(rd)})
	body, _ := json.Marshal(kbstypes.Attestation{
		InitData:    &kbstypes.InitData{Format: "toml", Body: "version = \"0.1.0\"\n[data]\nk = \"v\"\n"},
		RuntimeData: kbstypes.RuntimeData{Nonce: nonce, TeePubKey: g.jwk},
		TeeEvidence: kbstypes.TeeEvidence{PrimaryEvidence: ev},
	})
	return body
}

// attest posts body; on 200 it keeps the token. It returns status and body.
func (g *guest) attest(body []byte) (int, []byte) {
	st, b := g.k.do(g.c, "POST", "/kbs/v0/attest", "application/json", body, nil)
	if st == 200 {
		var tok kbstypes.AttestationToken
		if err := json.Unmarshal(b, &tok); err != nil {
			g.k.t.Fatal(err)
		}
		g.token = tok.Token
	}
	return st, b
}

func (g *guest) mustAttest() {
	g.k.t.Helper()
	g.auth()
	if st, b := g.attest(g.attestBody(g.nonce)); st != 200 {
		g.k.t.Fatalf("attest: %d %s", st, b)
	}
}

// resource fetches a resource by cookie (bearer "") or Bearer token and
// decrypts it on 200.
func (g *guest) resource(path, bearer string) (int, []byte) {
	g.k.t.Helper()
	hdr := http.Header{}
	if bearer != "" {
		hdr.Set("Authorization", "Bearer "+bearer)
	}
	st, b := g.k.do(g.c, "GET", "/kbs/v0/resource/"+path, "", nil, hdr)
	if st != 200 {
		return st, b
	}
	obj, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		g.k.t.Fatalf("response is not a JWE: %v: %s", err, b)
	}
	pt, err := obj.Decrypt(g.key)
	if err != nil {
		g.k.t.Fatalf("decrypt: %v", err)
	}
	return st, pt
}

func (k *kbs) adminToken(key ed25519.PrivateKey, role string, iat, exp time.Duration) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, nil)
	if err != nil {
		k.t.Fatal(err)
	}
	claims := map[string]any{"iat": k.now.Add(iat).Unix(), "exp": k.now.Add(exp).Unix()}
	if role != "" { // none: the KBS grants the key's role
		claims["role"] = role
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		k.t.Fatal(err)
	}
	return tok
}

// adminDo sends an admin request with a fresh admin token of role.
func (k *kbs) adminDo(role, method, path, ctype string, body []byte) (int, []byte) {
	k.t.Helper()
	hdr := http.Header{"Authorization": {"Bearer " + k.adminToken(k.admin, role, -time.Second, time.Minute)}}
	return k.do(k.ts.Client(), method, path, ctype, body, hdr)
}

func (k *kbs) mustAdmin(method, path, ctype string, body []byte) []byte {
	k.t.Helper()
	st, b := k.adminDo(adminapi.RoleAdmin, method, path, ctype, body)
	if st/100 != 2 {
		k.t.Fatalf("%s %s: %d %s", method, path, st, b)
	}
	return b
}

func policyBody(src string) []byte {
	b, _ := json.Marshal(adminapi.PolicyBody{Type: "rego", Policy: base64.RawURLEncoding.EncodeToString([]byte(src))})
	return b
}

const allowAll = "package policy\nimport rego.v1\ndefault allow := false\nallow if true\n"

func (k *kbs) allowAllAndPut(path, value string) {
	k.t.Helper()
	k.mustAdmin("POST", adminapi.PathResourcePolicy, "application/json", policyBody(allowAll))
	k.mustAdmin("POST", adminapi.PathResource+path, "application/octet-stream", []byte(value))
}

func problem(t *testing.T, b []byte) kbstypes.Problem {
	t.Helper()
	var p kbstypes.Problem
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("not a problem body: %s", b)
	}
	return p
}

// wantProblem asserts the status and check of a problem answer.
func wantProblem(t *testing.T, st int, b []byte, status int, check string) kbstypes.Problem {
	t.Helper()
	if st != status {
		t.Fatalf("status %d, want %d: %s", st, status, b)
	}
	p := problem(t, b)
	if p.Status != status || p.Check != check {
		t.Fatalf("problem %+v, want status %d check %q", p, status, check)
	}
	return p
}

package adminclient

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

type recorded struct {
	method, path, query, contentType, auth string
	body                                   []byte
}

// fakeKBS answers every request with status and body and records it.
type fakeKBS struct {
	srv    *httptest.Server
	got    []recorded
	status int
	body   []byte
}

func newFakeKBS(t *testing.T) *fakeKBS {
	t.Helper()
	f := &fakeKBS{status: http.StatusOK}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.got = append(f.got, recorded{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), r.Header.Get("Authorization"), body})
		if f.status >= 400 {
			w.Header().Set("Content-Type", kbstypes.ProblemContentType)
		}
		w.WriteHeader(f.status)
		w.Write(f.body)
	}))
	// Handshakes that fail on purpose (unknown CA) would otherwise be logged.
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeKBS) last(t *testing.T) recorded {
	t.Helper()
	if len(f.got) == 0 {
		t.Fatal("no request reached the KBS")
	}
	return f.got[len(f.got)-1]
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func newClient(t *testing.T, f *fakeKBS, key ed25519.PrivateKey, opts ...Option) *Client {
	t.Helper()
	c, err := New(f.srv.URL, key, append([]Option{WithHTTPClient(f.srv.Client())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTokenShape(t *testing.T) {
	key := newKey(t)
	now := time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		opts     []Option
		wantRole string
	}{
		{"no role claim by default", nil, ""},
		{"auditor", []Option{WithRole(adminapi.RoleAuditor)}, adminapi.RoleAuditor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKBS(t)
			f.body = []byte(`{"resources":[]}`)
			c := newClient(t, f, key, append(tc.opts, WithClock(func() time.Time { return now }))...)
			if _, err := c.ListResources(context.Background()); err != nil {
				t.Fatal(err)
			}
			raw, ok := strings.CutPrefix(f.last(t).auth, "Bearer ")
			if !ok {
				t.Fatalf("Authorization = %q, want Bearer", f.last(t).auth)
			}
			tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
			if err != nil {
				t.Fatalf("token is not an EdDSA JWS: %v", err)
			}
			if typ := tok.Headers[0].ExtraHeaders["typ"]; typ != "JWT" {
				t.Errorf("typ = %v, want JWT", typ)
			}
			var std jwt.Claims
			var extra struct {
				Role string `json:"role"`
			}
			if err := tok.Claims(key.Public(), &std, &extra); err != nil {
				t.Fatalf("token does not verify with the public key: %v", err)
			}
			if extra.Role != tc.wantRole {
				t.Errorf("role = %q, want %q", extra.Role, tc.wantRole)
			}
			if !std.IssuedAt.Time().Equal(now) || !std.Expiry.Time().Equal(now.Add(5*time.Minute)) {
				t.Errorf("iat = %v, exp = %v; want %v and +5m", std.IssuedAt.Time(), std.Expiry.Time(), now)
			}
			other := newKey(t)
			if err := tok.Claims(other.Public(), &std); err == nil {
				t.Error("token verified with an unrelated key")
			}
		})
	}
}

func TestTokenFreshPerRequest(t *testing.T) {
	f := newFakeKBS(t)
	f.body = []byte(`{"resources":[]}`)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newClient(t, f, newKey(t), WithClock(func() time.Time { clock = clock.Add(time.Second); return clock }))
	for range 2 {
		if _, err := c.ListResources(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if f.got[0].auth == f.got[1].auth {
		t.Error("two requests carried the same token")
	}
}

func TestRoutes(t *testing.T) {
	ctx := context.Background()
	rego := []byte("package policy\ndefault allow := false\n# ~~??>>\n")
	tests := []struct {
		name      string
		respond   string
		call      func(*Client) (any, error)
		method    string
		path      string
		query     string
		wantBody  string // JSON compared semantically, or raw when not JSON
		wantValue any
	}{
		{
			name: "set resource", respond: `{"path":"default/key/1","size":3,"updated":"2026-01-02T03:04:05Z"}`,
			call:   func(c *Client) (any, error) { return c.SetResource(ctx, "/default/key/1", []byte("abc")) },
			method: "POST", path: "/kbs/v0/resource/default/key/1", wantBody: "abc",
			wantValue: adminapi.ResourceInfo{Path: "default/key/1", Size: 3, Updated: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
		},
		{
			name:   "delete resource",
			call:   func(c *Client) (any, error) { return nil, c.DeleteResource(ctx, "default/key/1") },
			method: "DELETE", path: "/kbs/v0/resource/default/key/1",
		},
		{
			name: "get resource", respond: "secret\x00bytes",
			call:   func(c *Client) (any, error) { return c.GetResource(ctx, "default/key/1") },
			method: "GET", path: "/kbs/v0/admin/resource/default/key/1", wantValue: []byte("secret\x00bytes"),
		},
		{
			name: "list resources", respond: `{"resources":[{"path":"a/b/c","size":1,"updated":"2026-01-02T03:04:05Z"}]}`,
			call:   func(c *Client) (any, error) { return c.ListResources(ctx) },
			method: "GET", path: "/kbs/v0/resources",
			wantValue: []adminapi.ResourceInfo{{Path: "a/b/c", Size: 1, Updated: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}},
		},
		{
			name:   "set resource policy",
			call:   func(c *Client) (any, error) { return nil, c.SetResourcePolicy(ctx, rego) },
			method: "POST", path: "/kbs/v0/resource-policy",
			wantBody: `{"type":"rego","policy":"` + base64.RawURLEncoding.EncodeToString(rego) + `"}`,
		},
		{
			name: "get resource policy", respond: `{"type":"rego","policy":"` + base64.RawURLEncoding.EncodeToString(rego) + `"}`,
			call:   func(c *Client) (any, error) { return c.GetResourcePolicy(ctx) },
			method: "GET", path: "/kbs/v0/resource-policy", wantValue: Policy{Type: "rego", Rego: string(rego)},
		},
		{
			name:   "set attestation policy",
			call:   func(c *Client) (any, error) { return nil, c.SetAttestationPolicy(ctx, "default", rego) },
			method: "POST", path: "/kbs/v0/attestation-policy",
			wantBody: `{"type":"rego","policy_id":"default","policy":"` + base64.RawURLEncoding.EncodeToString(rego) + `"}`,
		},
		{
			name:    "get attestation policy (padded standard base64 accepted)",
			respond: `{"type":"rego","policy_id":"default","policy":"` + base64.StdEncoding.EncodeToString(rego) + `"}`,
			call:    func(c *Client) (any, error) { return c.GetAttestationPolicy(ctx) },
			method:  "GET", path: "/kbs/v0/attestation-policy", wantValue: Policy{Type: "rego", ID: "default", Rego: string(rego)},
		},
		{
			name:   "set reference value",
			call:   func(c *Client) (any, error) { return nil, c.SetReferenceValue(ctx, "sample.svn", []string{"1", "2"}) },
			method: "POST", path: "/kbs/v0/reference-values", wantBody: `{"name":"sample.svn","values":["1","2"]}`,
		},
		{
			name:   "no values sends an empty list, not null (the KBS refuses it)",
			call:   func(c *Client) (any, error) { return nil, c.SetReferenceValue(ctx, "sample.svn", nil) },
			method: "POST", path: "/kbs/v0/reference-values", wantBody: `{"name":"sample.svn","values":[]}`,
		},
		{
			name: "set custom reference value",
			call: func(c *Client) (any, error) {
				return nil, c.PutReferenceValue(ctx, adminapi.ReferenceValue{Name: "svn", Values: []string{"1"}, Custom: true})
			},
			method: "POST", path: "/kbs/v0/reference-values", wantBody: `{"name":"svn","values":["1"],"custom":true}`,
		},
		{
			name:   "delete reference value",
			call:   func(c *Client) (any, error) { return nil, c.DeleteReferenceValue(ctx, "sample_svn") },
			method: "DELETE", path: "/kbs/v0/reference-values/sample_svn",
		},
		{
			name: "list reference values", respond: `{"reference_values":{"sample.svn":["2"]}}`,
			call:   func(c *Client) (any, error) { return c.ListReferenceValues(ctx) },
			method: "GET", path: "/kbs/v0/reference-values", wantValue: map[string][]string{"sample.svn": {"2"}},
		},
		{
			name: "audit", respond: `{"entries":[{"seq":8,"time":"2026-01-02T03:04:05Z","kind":"attest","verdict":"affirming","check":"attestation-policy"}],"next":8}`,
			call:   func(c *Client) (any, error) { return c.Audit(ctx, 7, 50, "") },
			method: "GET", path: "/kbs/v0/audit", query: "after=7&limit=50",
			wantValue: adminapi.AuditPage{Next: 8, Entries: []adminapi.AuditEntry{{
				Seq: 8, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Kind: "attest", Verdict: "affirming", Check: "attestation-policy"}}},
		},
		{
			name: "audit without limit", respond: `{"entries":[],"next":0}`,
			call:   func(c *Client) (any, error) { return c.Audit(ctx, 0, 0, "") },
			method: "GET", path: "/kbs/v0/audit", query: "after=0",
			wantValue: adminapi.AuditPage{Entries: []adminapi.AuditEntry{}},
		},
		{
			name: "audit of one kind", respond: `{"entries":[],"next":3}`,
			call:   func(c *Client) (any, error) { return c.Audit(ctx, 0, 0, adminapi.KindAdmin) },
			method: "GET", path: "/kbs/v0/audit", query: "after=0&kind=admin",
			wantValue: adminapi.AuditPage{Entries: []adminapi.AuditEntry{}, Next: 3},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKBS(t)
			f.body = []byte(tc.respond)
			got, err := tc.call(newClient(t, f, newKey(t)))
			if err != nil {
				t.Fatal(err)
			}
			r := f.last(t)
			if r.method != tc.method || r.path != tc.path || r.query != tc.query {
				t.Errorf("request = %s %s?%s, want %s %s?%s", r.method, r.path, r.query, tc.method, tc.path, tc.query)
			}
			switch {
			case tc.wantBody == "" && len(r.body) != 0:
				t.Errorf("body = %q, want none", r.body)
			case json.Valid([]byte(tc.wantBody)):
				var a, b any
				json.Unmarshal(r.body, &a)
				json.Unmarshal([]byte(tc.wantBody), &b)
				if !reflect.DeepEqual(a, b) || r.contentType != "application/json" {
					t.Errorf("body = %s (%s), want %s (application/json)", r.body, r.contentType, tc.wantBody)
				}
			case string(r.body) != tc.wantBody:
				t.Errorf("body = %q, want %q", r.body, tc.wantBody)
			}
			if tc.wantValue != nil && !reflect.DeepEqual(got, tc.wantValue) {
				t.Errorf("result = %#v, want %#v", got, tc.wantValue)
			}
		})
	}
}

func TestPolicyEncoding(t *testing.T) {
	// 0xfb 0xff encodes to "-_8" in base64url: no '+', '/' or padding.
	rego := []byte{0xfb, 0xff}
	body := EncodePolicy("", rego)
	if body.Policy != "-_8" || body.Type != "rego" || body.PolicyID != "" {
		t.Errorf("EncodePolicy = %+v, want policy -_8, type rego, no id", body)
	}
	for _, enc := range []string{"-_8", "-_8=", "+/8", "+/8="} {
		p, err := DecodePolicy(adminapi.PolicyBody{Policy: enc})
		if err != nil || p.Rego != string(rego) {
			t.Errorf("DecodePolicy(%q) = %q, %v", enc, p.Rego, err)
		}
	}
	if _, err := DecodePolicy(adminapi.PolicyBody{Policy: "not base64!"}); err == nil {
		t.Error("DecodePolicy accepted non-base64")
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     string
		want     kbstypes.Problem
		wantText string
	}{
		{
			name: "problem", status: 403,
			body:     `{"type":"about:blank","title":"Forbidden","status":403,"detail":"policy denied release","check":"resource-policy"}`,
			want:     kbstypes.Problem{Type: "about:blank", Title: "Forbidden", Status: 403, Detail: "policy denied release", Check: "resource-policy"},
			wantText: `KBS answered GET /kbs/v0/resources with 403 Forbidden (check "resource-policy"): policy denied release`,
		},
		{
			name: "status line wins over body", status: 401,
			body:     `{"title":"Unauthorized","status":500,"detail":"token expired","check":"admin-token"}`,
			want:     kbstypes.Problem{Title: "Unauthorized", Status: 401, Detail: "token expired", Check: "admin-token"},
			wantText: `401 Unauthorized (check "admin-token"): token expired`,
		},
		{
			name: "proxy HTML", status: 502, body: "<html>bad gateway</html>\n<body>" + strings.Repeat("x", 300),
			want:     kbstypes.Problem{Title: "Bad Gateway", Status: 502, Detail: "<html>bad gateway</html>"},
			wantText: "502 Bad Gateway: <html>bad gateway</html>",
		},
		{
			name: "long single line is cut", status: 500, body: strings.Repeat("y", 300),
			want:     kbstypes.Problem{Title: "Internal Server Error", Status: 500, Detail: strings.Repeat("y", 200) + "..."},
			wantText: "500 Internal Server Error: yyyy",
		},
		{
			name: "empty body", status: 404,
			want:     kbstypes.Problem{Title: "Not Found", Status: 404},
			wantText: "404 Not Found: Not Found",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKBS(t)
			f.status, f.body = tc.status, []byte(tc.body)
			_, err := newClient(t, f, newKey(t)).ListResources(context.Background())
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v (%T), want *Error", err, err)
			}
			if e.Problem != tc.want {
				t.Errorf("problem = %+v, want %+v", e.Problem, tc.want)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("message %q does not contain %q", err, tc.wantText)
			}
		})
	}
}

func TestResponseLimits(t *testing.T) {
	f := newFakeKBS(t)
	c := newClient(t, f, newKey(t))
	f.body = []byte(`{"resources":[` + strings.Repeat(" ", kbstypes.MaxResponseBody) + `]}`)
	if _, err := c.ListResources(context.Background()); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized JSON: err = %v", err)
	}
	f.body = make([]byte, kbstypes.MaxResourceSize+1)
	if _, err := c.GetResource(context.Background(), "a/b/c"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized resource: err = %v", err)
	}
	f.body = make([]byte, kbstypes.MaxResourceSize)
	if v, err := c.GetResource(context.Background(), "a/b/c"); err != nil || len(v) != kbstypes.MaxResourceSize {
		t.Errorf("resource at the limit: %d bytes, err %v", len(v), err)
	}
}

func TestClientSideValidation(t *testing.T) {
	f := newFakeKBS(t)
	c := newClient(t, f, newKey(t))
	ctx := context.Background()
	checks := []struct {
		name    string
		err     error
		wantErr string
	}{
		{"two-segment path", func() error { _, err := c.SetResource(ctx, "a/b", nil); return err }(), "three segments"},
		{"dot-dot path", c.DeleteResource(ctx, "a/../c"), "not allowed"},
		{"too large", func() error {
			_, err := c.SetResource(ctx, "a/b/c", make([]byte, kbstypes.MaxResourceSize+1))
			return err
		}(), "at most"},
		{"empty policy id", c.SetAttestationPolicy(ctx, "", []byte("x")), "policy id is empty"},
		{"empty reference name", c.SetReferenceValue(ctx, "", nil), "name is empty"},
	}
	for _, tc := range checks {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.wantErr) {
			t.Errorf("%s: err = %v, want %q", tc.name, tc.err, tc.wantErr)
		}
	}
	if len(f.got) != 0 {
		t.Errorf("invalid calls reached the KBS: %+v", f.got)
	}
}

func TestNew(t *testing.T) {
	key := newKey(t)
	for _, tc := range []struct {
		name, url string
		key       ed25519.PrivateKey
		opts      []Option
		wantErr   string
	}{
		{"no scheme", "127.0.0.1:8080", key, nil, "want https://HOST:PORT"},
		{"ftp", "ftp://127.0.0.1", key, nil, "want https://HOST:PORT"},
		{"no key", "https://127.0.0.1:8080", nil, nil, "Ed25519 private key"},
		{"bad CA", "https://127.0.0.1:8080", key, []Option{WithCACert([]byte("not pem"))}, "no PEM CERTIFICATE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.url, tc.key, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestCACert(t *testing.T) {
	f := newFakeKBS(t)
	f.body = []byte(`{"resources":[]}`)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})

	c, err := New(f.srv.URL+"/", newKey(t), WithCACert(certPEM))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListResources(context.Background()); err != nil {
		t.Fatalf("with the KBS certificate as CA: %v", err)
	}
	if got := f.last(t).path; got != "/kbs/v0/resources" {
		t.Errorf("trailing slash in base URL gave path %q", got)
	}

	c, err = New(f.srv.URL, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ListResources(context.Background())
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("without the CA: err = %v, want x509.UnknownAuthorityError", err)
	}
}

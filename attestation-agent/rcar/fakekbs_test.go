package rcar

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// fakeKBS implements just enough of the KBS protocol to check the client:
// it verifies what the client sends and records it.
type fakeKBS struct {
	t      *testing.T
	srv    *httptest.Server
	signer jose.Signer

	mu        sync.Mutex
	now       time.Time // issue time of tokens
	tokenTTL  time.Duration
	sessions  map[string]string          // session id -> nonce
	tokens    map[string]json.RawMessage // valid token -> TEE public key
	resources map[string][]byte
	// fail holds, per endpoint ("auth", "attest", "resource"), statuses to
	// answer with (in order) before serving normally.
	fail       map[string][]int
	denyDetail string   // when set, resources are denied with 403 resource-policy
	auths      []string // raw bodies of auth requests
	attests    []kbstypes.Attestation
	calls      map[string]int
	callTimes  map[string][]time.Time
}

func newFakeKBS(t *testing.T) *fakeKBS {
	t.Helper()
	return newFakeKBSOn(t, nil)
}

// newFakeKBSOn serves the fake KBS on l (nil: a new loopback port).
func newFakeKBSOn(t *testing.T, l net.Listener) *fakeKBS {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeKBS{
		t: t, signer: signer, now: time.Now(), tokenTTL: 5 * time.Minute,
		sessions: map[string]string{}, tokens: map[string]json.RawMessage{},
		resources: map[string][]byte{}, fail: map[string][]int{}, calls: map[string]int{},
		callTimes: map[string][]time.Time{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /kbs/v0/auth", f.auth)
	mux.HandleFunc("POST /kbs/v0/attest", f.attest)
	mux.HandleFunc("GET /kbs/v0/resource/{repo}/{type}/{tag}", f.resource)
	f.srv = httptest.NewUnstartedServer(mux)
	if l != nil {
		f.srv.Listener.Close()
		f.srv.Listener = l
	}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeKBS) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
}

func problem(w http.ResponseWriter, status int, check, detail string) {
	w.Header().Set("Content-Type", kbstypes.ProblemContentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(kbstypes.Problem{Title: http.StatusText(status), Status: status, Detail: detail, Check: check})
}

// injected answers with the next queued failure for endpoint, if any.
func (f *fakeKBS) injected(w http.ResponseWriter, endpoint string) bool {
	f.calls[endpoint]++
	f.callTimes[endpoint] = append(f.callTimes[endpoint], time.Now())
	q := f.fail[endpoint]
	if len(q) == 0 {
		return false
	}
	f.fail[endpoint] = q[1:]
	if q[0] == http.StatusTooManyRequests {
		// As Cloak's KBS answers a rate-limited client.
		w.Header().Set("Retry-After", "1")
		problem(w, q[0], "rate-limit", "too many requests; retry after 1 s")
		return true
	}
	problem(w, q[0], "injected", "injected failure")
	return true
}

func (f *fakeKBS) auth(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.injected(w, "auth") {
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		problem(w, 400, "request", err.Error())
		return
	}
	f.auths = append(f.auths, string(body))
	id := randB64(f.t, 16)
	nonce := randB64(f.t, 32)
	f.sessions[id] = nonce
	http.SetCookie(w, &http.Cookie{Name: kbstypes.SessionCookie, Value: id, Path: "/kbs/v0", HttpOnly: true, Secure: true})
	_ = json.NewEncoder(w).Encode(kbstypes.Challenge{Nonce: nonce})
}

func (f *fakeKBS) attest(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.injected(w, "attest") {
		return
	}
	cookie, err := r.Cookie(kbstypes.SessionCookie)
	if err != nil {
		problem(w, 401, "session", "no session cookie")
		return
	}
	nonce, ok := f.sessions[cookie.Value]
	if !ok {
		problem(w, 401, "session", "unknown session")
		return
	}
	delete(f.sessions, cookie.Value) // a nonce is good for one attestation
	var att kbstypes.Attestation
	if err := json.NewDecoder(r.Body).Decode(&att); err != nil {
		problem(w, 400, "request", err.Error())
		return
	}
	f.attests = append(f.attests, att)
	if att.RuntimeData.Nonce != nonce {
		problem(w, 401, "nonce", "nonce does not match the session")
		return
	}
	var ev kbstypes.SampleEvidence
	if err := json.Unmarshal(att.TeeEvidence.PrimaryEvidence, &ev); err != nil {
		problem(w, 400, "evidence", err.Error())
		return
	}
	want, err := kbstypes.RuntimeDataDigest(att.TeeEvidence.AdditionalEvidence, nonce, att.RuntimeData.TeePubKey)
	if err != nil {
		problem(w, 400, "report-data", err.Error())
		return
	}
	if ev.ReportData != base64.StdEncoding.EncodeToString(want) {
		problem(w, 401, "report-data", "report data does not bind nonce and key")
		return
	}
	token, err := jwt.Signed(f.signer).Claims(jwt.Claims{
		IssuedAt: jwt.NewNumericDate(f.now),
		Expiry:   jwt.NewNumericDate(f.now.Add(f.tokenTTL)),
	}).Serialize()
	if err != nil {
		f.t.Error(err)
		return
	}
	f.tokens[token] = att.RuntimeData.TeePubKey
	_ = json.NewEncoder(w).Encode(kbstypes.AttestationToken{Token: token})
}

func (f *fakeKBS) resource(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.injected(w, "resource") {
		return
	}
	pubJSON, ok := f.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	if !ok {
		problem(w, 401, "token", "unknown or expired token")
		return
	}
	if f.denyDetail != "" {
		problem(w, 403, "resource-policy", f.denyDetail)
		return
	}
	path := r.PathValue("repo") + "/" + r.PathValue("type") + "/" + r.PathValue("tag")
	val, ok := f.resources[path]
	if !ok {
		problem(w, 404, "resource", "no resource "+path)
		return
	}
	var pub jose.JSONWebKey
	if err := pub.UnmarshalJSON(pubJSON); err != nil {
		problem(w, 400, "tee-pubkey", err.Error())
		return
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.KeyAlgorithm(pub.Algorithm), Key: pub.Key}, nil)
	if err != nil {
		problem(w, 400, "tee-pubkey", err.Error())
		return
	}
	obj, err := enc.Encrypt(val)
	if err != nil {
		f.t.Error(err)
		return
	}
	_, _ = w.Write([]byte(obj.FullSerialize()))
}

// revokeTokens makes the next resource request with any current token fail
// with 401, as after a KBS restart.
func (f *fakeKBS) revokeTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.tokens)
}

func (f *fakeKBS) count(endpoint string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[endpoint]
}

func randB64(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

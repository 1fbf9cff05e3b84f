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
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/store/pgtest"
)

// startReplicas starts n in-process KBS replicas on separate loopback TLS
// listeners, sharing one PostgreSQL database, one data dir (storage.key,
// token-key.pem) and one admin key, as a cluster's replicas share Secrets.
func startReplicas(t *testing.T, url string, n int, mutate func(*Config)) []*kbs {
	t.Helper()
	dir := t.TempDir()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	var out []*kbs
	for range n {
		k := &kbs{t: t, admin: priv, now: time.Now()}
		cfg := Config{DataDir: dir, Storage: url, AdminKeys: []ed25519.PublicKey{pub}, PolicyRefresh: 200 * time.Millisecond}
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
		out = append(out, k)
	}
	return out
}

// loadGuest is a protocol client for concurrent use: errors are returned,
// never t.Fatal from another goroutine. Its cookie jar is per host, so the
// session cookie goes to every replica on 127.0.0.1.
type loadGuest struct {
	c   *http.Client
	key *ecdsa.PrivateKey
	jwk json.RawMessage
	// session, once pinned, is sent even after the cookie's expiry (the
	// jar would drop it), as a guest with a skewed clock would.
	session string
}

// pin keeps sending the current session cookie of base after it expires.
func (g *loadGuest) pin(base string) {
	u, _ := neturl.Parse(base + "/kbs/v0/")
	for _, c := range g.c.Jar.Cookies(u) {
		if c.Name == kbstypes.SessionCookie {
			g.session = c.Value
		}
	}
}

func (g *loadGuest) send(method, url string, body []byte) (*http.Response, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if g.session != "" {
		req.AddCookie(&http.Cookie{Name: kbstypes.SessionCookie, Value: g.session})
	}
	return g.c.Do(req)
}

func newLoadGuest(t testing.TB, client *http.Client) *loadGuest {
	jar, _ := cookiejar.New(nil)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk, err := json.Marshal(jose.JSONWebKey{Key: &key.PublicKey, Algorithm: "ECDH-ES+A256KW"})
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	if client != nil {
		if ht, ok := client.Transport.(*http.Transport); ok && ht.TLSClientConfig != nil {
			tr.TLSClientConfig = &tls.Config{RootCAs: ht.TLSClientConfig.RootCAs}
		}
	}
	c := &http.Client{Jar: jar, Transport: tr, Timeout: 20 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return &loadGuest{c: c, key: key, jwk: jwk}
}

// statusError is an answer that was not 2xx.
type statusError struct {
	status int
	check  string
	body   string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("status %d (%s): %s", e.status, e.check, e.body)
}

func (g *loadGuest) post(base, path string, body []byte) ([]byte, error) {
	resp, err := g.send("POST", base+path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		var p kbstypes.Problem
		json.Unmarshal(b, &p)
		return nil, &statusError{resp.StatusCode, p.Check, string(b)}
	}
	return b, nil
}

// auth starts a session at base and returns its nonce.
func (g *loadGuest) auth(base string) (string, error) {
	b, err := g.post(base, "/kbs/v0/auth", []byte(`{"version":"0.4.0","tee":"sample","extra-params":{}}`))
	if err != nil {
		return "", fmt.Errorf("auth at %s: %w", base, err)
	}
	var ch kbstypes.Challenge
	if err := json.Unmarshal(b, &ch); err != nil {
		return "", err
	}
	return ch.Nonce, nil
}

func (g *loadGuest) attestBody(nonce string) []byte {
	rd, _ := kbstypes.RuntimeDataDigest("", nonce, g.jwk)
	ev, _ := json.Marshal(kbstypes.SampleEvidence{SVN: "1", ReportData: base64.StdEncoding.EncodeToString(rd)})
	body, _ := json.Marshal(kbstypes.Attestation{
		RuntimeData: kbstypes.RuntimeData{Nonce: nonce, TeePubKey: g.jwk},
		TeeEvidence: kbstypes.TeeEvidence{PrimaryEvidence: ev},
	})
	return body
}

// attest posts body at base and returns the token.
func (g *loadGuest) attest(base string, body []byte) (string, error) {
	b, err := g.post(base, "/kbs/v0/attest", body)
	if err != nil {
		return "", fmt.Errorf("attest at %s: %w", base, err)
	}
	var tok kbstypes.AttestationToken
	return tok.Token, json.Unmarshal(b, &tok)
}

// resource fetches path by session cookie at base and decrypts it.
func (g *loadGuest) resource(base, path string) ([]byte, error) {
	resp, err := g.send("GET", base+"/kbs/v0/resource/"+path, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		var p kbstypes.Problem
		json.Unmarshal(b, &p)
		return nil, fmt.Errorf("resource at %s: %w", base, &statusError{resp.StatusCode, p.Check, string(b)})
	}
	obj, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, err
	}
	return obj.Decrypt(g.key)
}

// stepError names the replica a handshake step failed at.
type stepError struct {
	base string
	err  error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// handshake runs auth, attest and resource, each at a replica picked at
// random from bases, and returns the token and the attest body; an error
// is a *stepError.
func (g *loadGuest) handshake(bases []string, path string) (token string, body []byte, value []byte, err error) {
	pick := func() string { return bases[mrand.IntN(len(bases))] }
	b := pick()
	nonce, err := g.auth(b)
	if err != nil {
		return "", nil, nil, &stepError{b, err}
	}
	body = g.attestBody(nonce)
	b = pick()
	if token, err = g.attest(b, body); err != nil {
		return "", body, nil, &stepError{b, err}
	}
	b = pick()
	if value, err = g.resource(b, path); err != nil {
		return token, body, nil, &stepError{b, err}
	}
	return token, body, value, nil
}

func urls(ks []*kbs) []string {
	var out []string
	for _, k := range ks {
		out = append(out, k.ts.URL)
	}
	return out
}

func TestReplicasServeAnyStep(t *testing.T) {
	pg := pgtest.Start(t)
	ks := startReplicas(t, pg.NewDatabase(t), 3, nil)
	k0 := ks[0]
	k0.mustAdmin("POST", adminapi.PathResource+"default/key/one", "application/octet-stream", []byte("cluster-secret"))

	// A policy set at one replica is in force at all within one second.
	g := newLoadGuest(t, k0.ts.Client())
	if _, _, _, err := g.handshake(urls(ks[1:2]), "default/key/one"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("default policy should refuse sample evidence: %v", err)
	}
	set := time.Now()
	k0.mustAdmin("POST", adminapi.PathResourcePolicy, "application/json", policyBody(allowAll))
	for _, k := range ks[1:] {
		for {
			_, _, v, err := g.handshake([]string{k.ts.URL}, "default/key/one")
			if err == nil && string(v) == "cluster-secret" {
				break
			}
			if time.Since(set) > time.Second {
				t.Fatalf("policy set at replica 0 not in force at %s after 1 s: %v", k.ts.URL, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("policy in force on all replicas %v after it was set", time.Since(set).Round(time.Millisecond))

	// A token issued by one replica is honoured as a Bearer token by
	// another (they share token-key.pem).
	tok, _, _, err := g.handshake(urls(ks[:1]), "default/key/one")
	if err != nil {
		t.Fatal(err)
	}
	fresh := newLoadGuest(t, k0.ts.Client())
	req, _ := http.NewRequest("GET", ks[2].ts.URL+"/kbs/v0/resource/default/key/one", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := fresh.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("Bearer token of replica 0 at replica 2: %d, want 200", resp.StatusCode)
	}

	// A bounded load of guests spreading their steps at random.
	const guests, parallel = 60, 6
	errs := make(chan error, guests)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for range guests {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			g := newLoadGuest(t, k0.ts.Client())
			_, _, v, err := g.handshake(urls(ks), "default/key/one")
			if err == nil && string(v) != "cluster-secret" {
				err = fmt.Errorf("resource value %q", v)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// A nonce is accepted once across all replicas, even when the same
// attestation reaches all of them at once.
func TestReplicasRefuseReplay(t *testing.T) {
	pg := pgtest.Start(t)
	ks := startReplicas(t, pg.NewDatabase(t), 3, nil)
	bases := urls(ks)
	g := newLoadGuest(t, ks[0].ts.Client())

	nonce, err := g.auth(bases[0])
	if err != nil {
		t.Fatal(err)
	}
	body := g.attestBody(nonce)
	if _, err := g.attest(bases[1], body); err != nil {
		t.Fatal(err)
	}
	_, err = g.attest(bases[2], body)
	if se, ok := errorsAs(err); !ok || se.status != 401 || se.check != "nonce-used" {
		t.Fatalf("replay through a second replica: %v, want 401 nonce-used", err)
	}

	for round := range 5 {
		nonce, err := g.auth(bases[round%3])
		if err != nil {
			t.Fatal(err)
		}
		body := g.attestBody(nonce)
		var wg sync.WaitGroup
		results := make([]error, 3)
		for i, b := range bases {
			wg.Add(1)
			go func() { defer wg.Done(); _, results[i] = g.attest(b, body) }()
		}
		wg.Wait()
		ok := 0
		for _, err := range results {
			if err == nil {
				ok++
			} else if se, isSE := errorsAs(err); !isSE || se.check != "nonce-used" {
				t.Fatalf("round %d: %v, want success or nonce-used", round, err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: the same attestation was accepted %d times across replicas, want once", round, ok)
		}
	}
}

func errorsAs(err error) (*statusError, bool) {
	for err != nil {
		if se, ok := err.(*statusError); ok {
			return se, true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return nil, false
		}
		err = u.Unwrap()
	}
	return nil, false
}

// Expiry is the database's: an expired session is refused by every
// replica, for attest and for resources.
func TestReplicasRefuseExpiredSession(t *testing.T) {
	pg := pgtest.Start(t)
	ks := startReplicas(t, pg.NewDatabase(t), 3, func(c *Config) { c.SessionTTL = time.Second })
	ks[0].allowAllAndPut("default/key/one", "v")
	bases := urls(ks)
	var attested, fresh []*loadGuest
	var bodies [][]byte
	for range ks {
		a := newLoadGuest(t, ks[0].ts.Client())
		if _, _, _, err := a.handshake(bases[:1], "default/key/one"); err != nil {
			t.Fatal(err)
		}
		a.pin(bases[0])
		f := newLoadGuest(t, ks[0].ts.Client())
		nonce, err := f.auth(bases[0])
		if err != nil {
			t.Fatal(err)
		}
		f.pin(bases[0])
		attested, fresh, bodies = append(attested, a), append(fresh, f), append(bodies, f.attestBody(nonce))
	}
	time.Sleep(1200 * time.Millisecond)
	// Every replica in turn, for each session: all say expired.
	for i, b := range bases {
		for j := range attested {
			_, err := attested[j].resource(b, "default/key/one")
			if se, ok := errorsAs(err); !ok || se.status != 401 || se.check != "session-expired" {
				t.Errorf("replica %d, session %d: resource on an expired session: %v, want 401 session-expired", i, j, err)
			}
		}
	}
	for i, b := range bases {
		_, err := attested[i].resource(b, "default/key/one")
		if se, ok := errorsAs(err); !ok || se.status != 401 || se.check != "session-expired" {
			t.Errorf("replica %d: resource on an expired session: %v, want 401 session-expired", i, err)
		}
		_, err = fresh[i].attest(b, bodies[i])
		if se, ok := errorsAs(err); !ok || se.status != 401 || se.check != "session-expired" {
			t.Errorf("replica %d: attest on an expired session: %v, want 401 session-expired", i, err)
		}
	}
}

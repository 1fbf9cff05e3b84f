package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/internal/testutil"
)

// fuzzServer is a server whose store is on tmpfs: every refused attestation
// appends an audit entry, one bbolt commit and fsync each, and on a disk
// those syncs, not the parsing, set the rate of FuzzAttestBody. The rate
// limits are off: every input comes from httptest's one client address.
func fuzzServer(f *testing.F, now func() time.Time) *Server {
	off := RateLimit{PerSecond: -1}
	srv, err := New(Config{DataDir: testutil.MemTempDir(f), Now: now, AuthRateLimit: off, AttestRateLimit: off})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	return srv
}

// checkAnswer fails on a server error or an error answer that is not RFC 7807.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder) {
	if rec.Code >= 500 {
		t.Fatalf("server error %d: %s", rec.Code, rec.Body)
	}
	if rec.Code >= 400 {
		var p kbstypes.Problem
		if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Check == "" || p.Status != rec.Code {
			t.Fatalf("error answer is not a problem body: %d %s", rec.Code, rec.Body)
		}
	}
}

func FuzzAuthBody(f *testing.F) {
	srv := fuzzServer(f, nil)
	f.Add([]byte(`{"version":"0.4.0","tee":"sample","extra-params":{}}`))
	f.Add([]byte(`{"version":"0.4","tee":"snp"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/kbs/v0/auth", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		checkAnswer(t, rec)
	})
}

func FuzzAttestBody(f *testing.F) {
	// Each input advances the clock past the session TTL so that the
	// sessions of earlier inputs expire and never fill the table.
	var clock atomic.Int64
	srv := fuzzServer(f, func() time.Time { return time.Unix(clock.Load(), 0) })
	f.Add([]byte(`{"runtime-data":{"nonce":"x","tee-pubkey":{"kty":"EC"}},"tee-evidence":{"primary_evidence":{}}}`))
	f.Add([]byte(`{"init-data":{"format":"toml","body":"algorithm=1"},"runtime-data":{"nonce":"x","tee-pubkey":{}},"tee-evidence":{"primary_evidence":"x"}}`))
	f.Add([]byte(`{}`))
	// With the session's nonce in place of "NONCE", inputs get past the
	// nonce check to the tee-pubkey, init-data and evidence parsers.
	f.Add([]byte(`{"runtime-data":{"nonce":"NONCE","tee-pubkey":{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}},"tee-evidence":{"primary_evidence":{"svn":"1"}}}`))
	f.Add([]byte(`{"init-data":{"format":"toml","body":"algorithm = \"sha256\"\nversion = \"0.1.0\"\n"},"runtime-data":{"nonce":"NONCE","tee-pubkey":{"kty":"RSA","n":"AQAB","e":"AQAB"}},"tee-evidence":{"primary_evidence":"x"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		// A fresh session per input, so the nonce is never already used.
		clock.Add(3600)
		authReq := httptest.NewRequest("POST", "/kbs/v0/auth", bytes.NewReader([]byte(`{"version":"0.4.0","tee":"sample"}`)))
		authReq.Header.Set("Content-Type", "application/json")
		authRec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(authRec, authReq)
		if authRec.Code != http.StatusOK {
			t.Fatalf("auth: %d", authRec.Code)
		}
		var challenge kbstypes.Challenge
		if err := json.Unmarshal(authRec.Body.Bytes(), &challenge); err != nil {
			t.Fatal(err)
		}
		body = bytes.ReplaceAll(body, []byte("NONCE"), []byte(challenge.Nonce))
		req := httptest.NewRequest("POST", "/kbs/v0/attest", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for _, c := range authRec.Result().Cookies() {
			req.AddCookie(c)
		}
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		checkAnswer(t, rec)
		if rec.Code == http.StatusOK {
			t.Fatalf("attestation accepted without valid evidence: %s", body)
		}
	})
}

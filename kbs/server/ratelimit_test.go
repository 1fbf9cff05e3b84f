package server

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func TestRateLimitAuth(t *testing.T) {
	k := startKBS(t, t.TempDir(), func(c *Config) {
		c.AuthRateLimit = RateLimit{PerSecond: 1, Burst: 2}
		c.AttestRateLimit = RateLimit{PerSecond: 0.5, Burst: 1}
		c.RateLimitLoopback = true
	})
	auth := func() (int, []byte, string) {
		req := []byte(`{"version":"0.4.0","tee":"sample"}`)
		resp, err := k.ts.Client().Post(k.ts.URL+"/kbs/v0/auth", "application/json", strings.NewReader(string(req)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, resp.Header.Get("Retry-After")
	}
	for i := range 2 {
		if st, b, _ := auth(); st != 200 {
			t.Fatalf("auth %d within the burst: %d %s", i, st, b)
		}
	}
	st, b, retry := auth()
	p := wantProblem(t, st, b, 429, "rate-limit")
	if retry != "1" || !strings.Contains(p.Detail, "retry after 1 s") || !strings.Contains(p.Detail, "127.0.0.1") {
		t.Fatalf("Retry-After %q, detail %q: want 1 s, naming the client and when to retry", retry, p.Detail)
	}
	_, mb := k.do(k.ts.Client(), "GET", "/metrics", "", nil, nil)
	if !strings.Contains(string(mb), `kbs_rate_limited_total{path="/kbs/v0/auth"} 1`) {
		t.Fatalf("metrics lack the 429:\n%s", mb)
	}
	time.Sleep(1100 * time.Millisecond)
	if st, b, _ := auth(); st != 200 {
		t.Fatalf("auth after waiting Retry-After: %d %s", st, b)
	}

	// attest has its own bucket: the first attempt is served (and refused
	// for want of a session), the second is limited for 2 s.
	g := k.ecGuest()
	if st, b := g.attest(g.attestBody("n")); st != 401 {
		t.Fatalf("first attest: %d %s, want 401 (no session)", st, b)
	}
	st, b = g.attest(g.attestBody("n"))
	if p := wantProblem(t, st, b, 429, "rate-limit"); !strings.Contains(p.Detail, "retry after 2 s") {
		t.Fatalf("attest limit detail %q", p.Detail)
	}
}

func TestLimiterPerAddressAndBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(RateLimit{PerSecond: 2, Burst: 1})
	l.now = func() time.Time { return now }
	if ok, _ := l.allow("a"); !ok {
		t.Fatal("first request of a refused")
	}
	ok, wait := l.allow("a")
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("second request of a: %v, wait %v; want refused for 500ms", ok, wait)
	}
	if ok, _ := l.allow("b"); !ok {
		t.Fatal("b is limited by a's requests")
	}
	now = now.Add(500 * time.Millisecond)
	if ok, _ := l.allow("a"); !ok {
		t.Fatal("a refused after its wait")
	}
	// The table is bounded: a flood of addresses cannot grow it forever,
	// and idle ones are forgotten.
	for i := range maxClients {
		l.allow(fmt.Sprint("flood-", i))
	}
	if ok, _ := l.allow("new"); ok {
		t.Fatal("a new address was admitted beyond maxClients")
	}
	now = now.Add(limiterIdle + time.Second)
	if ok, _ := l.allow("new"); !ok || len(l.clients) != 1 {
		t.Fatalf("after the idle time: ok %v, %d clients held; want the table swept", ok, len(l.clients))
	}
	if newLimiter(RateLimit{PerSecond: 0}) != nil || newLimiter(RateLimit{PerSecond: -1}) != nil {
		t.Fatal("a limit of 0 or less should be off")
	}
}

// Loopback peers (local tools, benchmarks) are exempt unless asked.
func TestRateLimitExemptsLoopback(t *testing.T) {
	k := startKBS(t, t.TempDir(), func(c *Config) { c.AuthRateLimit = RateLimit{PerSecond: 1, Burst: 1} })
	for i := range 5 {
		st, b := k.do(k.ts.Client(), "POST", "/kbs/v0/auth", "application/json", []byte(`{"version":"0.4.0","tee":"sample"}`), nil)
		if st != 200 {
			t.Fatalf("loopback auth %d: %d %s", i, st, b)
		}
	}
}

package rcar

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/teekey"
)

var keyPath = kbstypes.ResourcePath{Repository: "default", Type: "key", Tag: "1"}

// clock is an adjustable time source for token expiry.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newClient(t *testing.T, f *fakeKBS, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{
		URL:       f.srv.URL,
		CACertPEM: f.certPEM(),
		Provider:  sample.New(""),
		Backoff:   time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGetResource(t *testing.T) {
	initData := &kbstypes.InitData{Format: "toml", Body: "version = \"0.1.0\"\nalgorithm = \"sha384\"\n"}
	for _, alg := range []jose.KeyAlgorithm{teekey.ECDHES, teekey.RSAOAEP} {
		t.Run(string(alg), func(t *testing.T) {
			f := newFakeKBS(t)
			f.resources["default/key/1"] = []byte("0123456789abcdef0123456789abcdef")
			key, err := teekey.New(alg)
			if err != nil {
				t.Fatal(err)
			}
			c := newClient(t, f, func(c *Config) { c.Key = key; c.InitData = initData })

			for range 2 {
				got, err := c.GetResource(context.Background(), keyPath)
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != "0123456789abcdef0123456789abcdef" {
					t.Fatalf("GetResource = %q", got)
				}
			}
			// The second fetch reuses the token.
			if n := f.count("attest"); n != 1 {
				t.Errorf("attestations = %d, want 1", n)
			}
			want := `{"version":"0.4.0","tee":"sample","extra-params":{}}`
			if len(f.auths) != 1 || f.auths[0] != want {
				t.Errorf("auth bodies = %q, want [%q]", f.auths, want)
			}
			att := f.attests[0]
			if string(att.RuntimeData.TeePubKey) != string(key.PublicJWK()) {
				t.Errorf("tee-pubkey = %s, want %s", att.RuntimeData.TeePubKey, key.PublicJWK())
			}
			if att.InitData == nil || *att.InitData != *initData {
				t.Errorf("init-data = %+v, want %+v", att.InitData, initData)
			}
			if att.TeeEvidence.AdditionalEvidence != "" {
				t.Errorf("additional_evidence = %q, want empty", att.TeeEvidence.AdditionalEvidence)
			}
		})
	}
}

func TestAttestWithoutCookieFails(t *testing.T) {
	// A client whose jar drops cookies cannot finish the handshake: proves
	// the session cookie from auth is what the fake KBS relies on.
	f := newFakeKBS(t)
	c := newClient(t, f, func(c *Config) {
		c.CACertPEM = nil
		c.HTTPClient = &http.Client{Transport: f.srv.Client().Transport, Jar: dropJar{}}
	})
	_, err := c.Attest(context.Background())
	var ke *KBSError
	if !errors.As(err, &ke) || ke.Status != 401 || ke.Detail != "no session cookie" {
		t.Fatalf("Attest error = %v, want 401 no session cookie", err)
	}
}

type dropJar struct{}

func (dropJar) SetCookies(*url.URL, []*http.Cookie) {}
func (dropJar) Cookies(*url.URL) []*http.Cookie     { return nil }

func TestReattestOnceOn401(t *testing.T) {
	f := newFakeKBS(t)
	f.resources["default/key/1"] = []byte("k")
	c := newClient(t, f, nil)
	if _, err := c.GetResource(context.Background(), keyPath); err != nil {
		t.Fatal(err)
	}
	f.revokeTokens()
	if _, err := c.GetResource(context.Background(), keyPath); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if n := f.count("attest"); n != 2 {
		t.Errorf("attestations = %d, want 2 (one re-attestation)", n)
	}

	// A KBS that rejects every token: exactly one re-attestation, then the 401.
	f.mu.Lock()
	f.fail["resource"] = []int{401, 401, 401}
	f.mu.Unlock()
	_, err := c.GetResource(context.Background(), keyPath)
	var ke *KBSError
	if !errors.As(err, &ke) || ke.Status != 401 {
		t.Fatalf("error = %v, want KBSError 401", err)
	}
	if n := f.count("attest"); n != 3 {
		t.Errorf("attestations = %d, want 3", n)
	}
}

func TestTokenExpiry(t *testing.T) {
	clk := &clock{t: time.Now()}
	tests := []struct {
		name        string
		advance     time.Duration
		wantAttests int
	}{
		{"fresh token reused", 4 * time.Minute, 1},
		{"inside safety margin", 5*time.Minute - tokenMargin + time.Second, 2},
		{"expired", 6 * time.Minute, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKBS(t)
			f.now = clk.Now()
			c := newClient(t, f, func(c *Config) { c.Now = clk.Now })
			first, err := c.Token(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			clk.Add(tc.advance)
			second, err := c.Token(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if n := f.count("attest"); n != tc.wantAttests {
				t.Errorf("attestations = %d, want %d", n, tc.wantAttests)
			}
			if (first == second) != (tc.wantAttests == 1) {
				t.Errorf("token reused = %v, want %v", first == second, tc.wantAttests == 1)
			}
		})
	}
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name       string
		endpoint   string
		fail       []int
		retries    int
		wantStatus int // 0 = success
		wantCalls  int
	}{
		{"503 twice then ok", "auth", []int{503, 503}, 0, 0, 3},
		{"500 on attest then ok", "attest", []int{500}, 0, 0, 2},
		{"resource 502 then ok", "resource", []int{502}, 0, 0, 2},
		{"resource 504 then ok", "resource", []int{504, 504}, 0, 0, 3},
		{"503 beyond retries", "auth", []int{503, 503, 503, 503, 503}, 3, 503, 4},
		{"retries disabled", "auth", []int{503}, -1, 503, 1},
		{"no retry on 400", "attest", []int{400}, 0, 400, 1},
		{"429 beyond retries", "auth", []int{429, 429}, 1, 429, 2},
		{"no retry on 403", "resource", []int{403}, 0, 403, 1},
		{"no retry on 404", "resource", []int{404}, 0, 404, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKBS(t)
			f.resources["default/key/1"] = []byte("k")
			f.fail[tc.endpoint] = tc.fail
			c := newClient(t, f, func(c *Config) { c.Retries = tc.retries })
			_, err := c.GetResource(context.Background(), keyPath)
			if tc.wantStatus == 0 && err != nil {
				t.Fatalf("GetResource: %v", err)
			}
			if tc.wantStatus != 0 {
				var ke *KBSError
				if !errors.As(err, &ke) || ke.Status != tc.wantStatus {
					t.Fatalf("error = %v, want KBSError %d", err, tc.wantStatus)
				}
				// Only answers that may go away are worth the retries;
				// a refusal is reported as such.
				if retried := tc.wantStatus >= 500 || tc.wantStatus == 429; errors.Is(err, ErrUnreachable) != retried {
					t.Errorf("errors.Is(%v, ErrUnreachable) = %v, want %v", err, !retried, retried)
				}
			}
			if n := f.count(tc.endpoint); n != tc.wantCalls {
				t.Errorf("%s calls = %d, want %d", tc.endpoint, n, tc.wantCalls)
			}
		})
	}
}

func TestDeniedResourceMessage(t *testing.T) {
	f := newFakeKBS(t)
	f.denyDetail = "evidence comes from the unsigned sample TEE; the resource policy allows it only in development"
	c := newClient(t, f, nil)
	_, err := c.GetResource(context.Background(), keyPath)
	want := "kbs denied resource default/key/1 (403 resource-policy): evidence comes from the unsigned sample TEE; the resource policy allows it only in development"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v\nwant    %s", err, want)
	}
	if n := f.count("resource"); n != 1 {
		t.Errorf("resource calls = %d, want 1 (no retry on 403)", n)
	}
}

func TestResponseLimits(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /kbs/v0/auth", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"nonce":"` + strings.Repeat("A", kbstypes.MaxResponseBody) + `"}`))
	})
	f := newFakeKBS(t)
	f.srv.Config.Handler = mux
	c := newClient(t, f, nil)
	_, err := c.Attest(context.Background())
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("error = %v, want oversized answer refused", err)
	}
}

func TestNonProblemErrorBody(t *testing.T) {
	f := newFakeKBS(t)
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
	})
	c := newClient(t, f, func(c *Config) { c.Retries = -1 })
	_, err := c.Attest(context.Background())
	want := regexp.MustCompile(`^KBS ` + regexp.QuoteMeta(f.srv.URL) + ` failed: 1 attempt over \d+\.\ds, last error: ` +
		regexp.QuoteMeta("kbs failed attestation request (auth) (502): <html>bad gateway</html>; check the KBS's log") + `$`)
	if err == nil || !want.MatchString(err.Error()) {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

func TestTLSAndNetworkErrors(t *testing.T) {
	t.Run("unknown authority is not retried", func(t *testing.T) {
		f := newFakeKBS(t)
		c := newClient(t, f, func(c *Config) { c.CACertPEM = nil })
		_, err := c.Attest(context.Background())
		var uae x509.UnknownAuthorityError
		if !errors.As(err, &uae) {
			t.Fatalf("error = %v, want x509.UnknownAuthorityError", err)
		}
		if retryable(err) {
			t.Error("certificate error classified as retryable")
		}
	})
	t.Run("connection refused is retried", func(t *testing.T) {
		f := newFakeKBS(t)
		f.srv.Close()
		c := newClient(t, f, nil)
		_, err := c.Attest(context.Background())
		if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "KBS "+f.srv.URL+" did not answer: 6 attempts") {
			t.Fatalf("error = %v, want connection refused naming the KBS", err)
		}
		if !retryable(err) {
			t.Error("connection refused classified as not retryable")
		}
	})
	t.Run("context cancel stops backoff", func(t *testing.T) {
		f := newFakeKBS(t)
		f.fail["auth"] = []int{503, 503, 503, 503}
		c := newClient(t, f, func(c *Config) { c.Backoff = time.Hour; c.Budget = 4 * time.Hour })
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Attest(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
			t.Fatalf("error = %v after %v, want deadline exceeded promptly", err, time.Since(start))
		}
	})
}

func TestConcurrentCallersShareAttestation(t *testing.T) {
	f := newFakeKBS(t)
	f.resources["default/key/1"] = []byte("k")
	c := newClient(t, f, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := c.GetResource(context.Background(), keyPath)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.count("attest"); n != 1 {
		t.Errorf("attestations = %d, want 1", n)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	p := sample.New("")
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no scheme", Config{URL: "kbs.example:8080", Provider: p}, "want http(s)://host[:port]"},
		{"ftp", Config{URL: "ftp://kbs", Provider: p}, "want http(s)://"},
		{"no provider", Config{URL: "https://kbs"}, "no evidence provider"},
		{"bad PEM", Config{URL: "https://kbs", Provider: p, CACertPEM: []byte("nope")}, "no PEM certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New error = %v, want containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestGetResourceRejectsBadPath(t *testing.T) {
	f := newFakeKBS(t)
	c := newClient(t, f, nil)
	_, err := c.GetResource(context.Background(), kbstypes.ResourcePath{Repository: "..", Type: "key", Tag: "1"})
	if err == nil || f.count("auth") != 0 {
		t.Fatalf("error = %v, auth calls = %d; want refusal before contacting the KBS", err, f.count("auth"))
	}
}

func TestDefaults(t *testing.T) {
	c, err := New(Config{URL: "https://kbs.example", Provider: sample.New("")})
	if err != nil {
		t.Fatal(err)
	}
	// A hung KBS costs at most the budget; it must stay well inside the
	// shim's agent timeout (120 s in CI) for the guest's error to win.
	if c.retries != 5 || c.backoff != 250*time.Millisecond || c.timeout != 10*time.Second || c.budget != 30*time.Second {
		t.Errorf("defaults: retries %d, backoff %v, request timeout %v, budget %v", c.retries, c.backoff, c.timeout, c.budget)
	}
	if c.http.Timeout != 0 {
		t.Errorf("http.Client.Timeout = %v; requests are bounded by their context", c.http.Timeout)
	}
}

// A rate-limited client waits for the KBS's Retry-After, then succeeds.
func TestRetryAfterHonoured(t *testing.T) {
	f := newFakeKBS(t)
	f.resources["default/key/1"] = []byte("k")
	f.fail["auth"] = []int{429, 429}
	f.fail["attest"] = []int{429}
	c := newClient(t, f, func(c *Config) { c.Backoff = 10 * time.Millisecond })
	start := time.Now()
	if _, err := c.GetResource(context.Background(), keyPath); err != nil {
		t.Fatalf("GetResource after 429s: %v", err)
	}
	// A retried attest restarts at auth with a fresh session.
	if n := f.count("auth"); n != 4 {
		t.Fatalf("auth calls = %d, want 4 (two 429s, one whose attest got 429, then success)", n)
	}
	f.mu.Lock()
	times := slices.Clone(f.callTimes["auth"])
	f.mu.Unlock()
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < 990*time.Millisecond {
			t.Errorf("retry %d came %v after the 429, before its Retry-After of 1 s", i, gap)
		}
	}
	if total := time.Since(start); total < 3*time.Second-30*time.Millisecond {
		t.Errorf("three 429s with Retry-After: 1 took %v, want at least 3 s", total)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"2", 2 * time.Second},
		{"86400", maxRetryAfter},
		{"-1", 0},
		{"1.5", 0},
		{"soon", 0},
		{now.Add(7 * time.Second).Format(http.TimeFormat), 7 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"99999999999999999999", 0},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

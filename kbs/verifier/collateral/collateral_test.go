package collateral

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/internal/testutil"
)

// server serves answers from a handler and counts requests.
type server struct {
	*httptest.Server
	hits atomic.Int32
}

func newServer(t *testing.T, h http.HandlerFunc) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newFetcher(o Options) (*Fetcher, *[]time.Duration) {
	f := New(o)
	var waits []time.Duration
	var mu sync.Mutex
	f.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return ctx.Err()
	}
	return f, &waits
}

func TestOfflinePath(t *testing.T) {
	tests := []struct{ url, want, err string }{
		{"https://kdsintf.amd.com/vcek/v1/Milan/cert_chain", "/d/kdsintf.amd.com/vcek/v1/Milan/cert_chain", ""},
		{"https://kdsintf.amd.com/vcek/v1/Milan/abcd?ucodeSPL=115&blSPL=3", "/d/kdsintf.amd.com/vcek/v1/Milan/abcd@blSPL=3&ucodeSPL=115", ""},
		{"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00806f050000", "/d/api.trustedservices.intel.com/tdx/certification/v4/tcb@fmspc=00806f050000", ""},
		{"https://h/a/../../../etc/passwd", "", `".." path segment`},
		{"https://h", "", "no path"},
		{"/relative", "", "not absolute"},
	}
	for _, tc := range tests {
		got, err := OfflinePath("/d", tc.url)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("OfflinePath(%q) = %q, %v; want error %q", tc.url, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("OfflinePath(%q) = %q, %v; want %q", tc.url, got, err, tc.want)
		}
	}
}

func TestOfflineDirFirst(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("network")) })
	dir := t.TempDir()
	u := s.URL + "/tdx/certification/v4/tcb?fmspc=00aa"
	p, err := OfflinePath(dir, u)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("offline"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+HeadersSuffix, []byte("TCB-Info-Issuer-Chain: abc%20def\nX-Other: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, _ := newFetcher(Options{Dir: dir, Client: s.Client()})
	h, b, err := f.Get(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "offline" || h.Get("Tcb-Info-Issuer-Chain") != "abc%20def" || h.Get("X-Other") != "1" {
		t.Fatalf("got %q %v", b, h)
	}
	if s.hits.Load() != 0 {
		t.Fatalf("network used although the offline dir had the file")
	}
	// A URL the dir lacks goes to the network when not offline.
	_, b, err = f.Get(context.Background(), s.URL+"/other")
	if err != nil || string(b) != "network" {
		t.Fatalf("Get other = %q, %v", b, err)
	}
}

func TestOfflineModeMissing(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("network")) })
	dir := t.TempDir()
	f, _ := newFetcher(Options{Dir: dir, Offline: true, Client: s.Client()})
	u := s.URL + "/vcek/v1/Genoa/crl"
	_, _, err := f.Get(context.Background(), u)
	var me *MissingError
	if !errors.As(err, &me) {
		t.Fatalf("err = %v, want MissingError", err)
	}
	want, _ := OfflinePath(dir, u)
	if me.Path != want || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name %s", err, want)
	}
	if s.hits.Load() != 0 {
		t.Fatal("offline mode used the network")
	}
	f2, _ := newFetcher(Options{Offline: true})
	if _, _, err := f2.Get(context.Background(), u); err == nil || !strings.Contains(err.Error(), "no offline collateral directory") {
		t.Fatalf("err = %v", err)
	}
}

func TestCacheHonoursFreshness(t *testing.T) {
	var maxAge atomic.Value
	maxAge.Store("max-age=60")
	var n atomic.Int32
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", maxAge.Load().(string))
		w.Write([]byte{byte('0' + n.Add(1))})
	})
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	cacheDir := t.TempDir()
	f, _ := newFetcher(Options{CacheDir: cacheDir, Client: s.Client(), Now: c.Now})
	get := func(f *Fetcher) string {
		t.Helper()
		_, b, err := f.Get(context.Background(), s.URL+"/x")
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := get(f); got != "1" {
		t.Fatalf("first = %s", got)
	}
	c.Add(59 * time.Second)
	if got := get(f); got != "1" {
		t.Fatalf("within max-age = %s, want cached 1", got)
	}
	// A new fetcher over the same cache dir reads the disk cache.
	f2, _ := newFetcher(Options{CacheDir: cacheDir, Client: s.Client(), Now: c.Now})
	if got := get(f2); got != "1" {
		t.Fatalf("disk cache = %s, want 1", got)
	}
	c.Add(2 * time.Second)
	maxAge.Store("no-store")
	if got := get(f); got != "2" {
		t.Fatalf("after expiry = %s, want refetch 2", got)
	}
	if got := get(f); got != "3" {
		t.Fatalf("no-store answer was cached: got %s, want 3", got)
	}
	// A corrupted disk cache is a miss, not a wrong answer.
	maxAge.Store("max-age=600")
	get(f) // 4, cached
	entries, _ := filepath.Glob(filepath.Join(cacheDir, "*.json"))
	if len(entries) == 0 {
		t.Fatal("nothing written to the disk cache")
	}
	for _, m := range entries {
		os.WriteFile(strings.TrimSuffix(m, ".json"), []byte("tampered"), 0o600)
	}
	f3, _ := newFetcher(Options{CacheDir: cacheDir, Client: s.Client(), Now: c.Now})
	if got := get(f3); got != "5" {
		t.Fatalf("tampered cache = %s, want refetch 5", got)
	}
}

func TestExpiry(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		h    http.Header
		want time.Time
	}{
		{http.Header{}, now.Add(DefaultTTL)},
		{http.Header{"Cache-Control": {"public, max-age=30"}}, now.Add(30 * time.Second)},
		{http.Header{"Cache-Control": {"no-cache"}}, time.Time{}},
		{http.Header{"Cache-Control": {"max-age=0"}}, time.Time{}},
		{http.Header{"Expires": {now.Add(time.Hour).Format(http.TimeFormat)}}, now.Add(time.Hour)},
		{http.Header{"Expires": {now.Add(-time.Hour).Format(http.TimeFormat)}}, time.Time{}},
		{http.Header{"Expires": {"garbage"}}, time.Time{}},
	}
	for _, tc := range tests {
		if got := expiry(tc.h, now); !got.Equal(tc.want) {
			t.Errorf("expiry(%v) = %v, want %v", tc.h, got, tc.want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	var n atomic.Int32
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusTooManyRequests)
		case 2:
			w.WriteHeader(http.StatusBadGateway)
		default:
			w.Write([]byte("ok"))
		}
	})
	f, waits := newFetcher(Options{Client: s.Client()})
	_, b, err := f.Get(context.Background(), s.URL+"/vcek")
	if err != nil || string(b) != "ok" {
		t.Fatalf("Get = %q, %v", b, err)
	}
	if len(*waits) != 2 || (*waits)[0] != 7*time.Second || (*waits)[1] != 2*time.Second {
		t.Fatalf("waits = %v, want [7s 2s] (Retry-After, then doubled backoff)", *waits)
	}
}

func TestFailures(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		ctx     func() (context.Context, context.CancelFunc)
		want    string
		hits    int32
	}{
		{"404 is final", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no such chip", http.StatusNotFound)
		}, nil, "answered 404 for", 1},
		{"5xx retried then given up", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
		}, nil, "answered 500", MaxAttempts},
		{"retry-after too long", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
		}, nil, "longer than", 1},
		{"retry-after past deadline", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
		}, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 10*time.Second)
		}, "pass the request deadline", 1},
		{"too large", func(w http.ResponseWriter, r *http.Request) {
			w.Write(make([]byte, MaxResponseSize+1))
		}, nil, "larger than", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, tc.handler)
			f, _ := newFetcher(Options{Client: s.Client()})
			ctx, cancel := context.Background(), context.CancelFunc(func() {})
			if tc.ctx != nil {
				ctx, cancel = tc.ctx()
			}
			defer cancel()
			_, _, err := f.Get(ctx, s.URL+"/x")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if s.hits.Load() != tc.hits {
				t.Fatalf("server hit %d times, want %d", s.hits.Load(), tc.hits)
			}
		})
	}
}

func TestRefusesPlainHTTP(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("plain HTTP server was contacted")
	}))
	defer s.Close()
	f, _ := newFetcher(Options{})
	if _, _, err := f.Get(context.Background(), s.URL+"/x"); err == nil || !strings.Contains(err.Error(), "not https") {
		t.Fatalf("err = %v", err)
	}
	if _, _, err := f.Get(context.Background(), "ftp://x/y"); err == nil {
		t.Fatal("ftp URL accepted")
	}
}

func TestConcurrentGetsShareOneRequest(t *testing.T) {
	release := make(chan struct{})
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Write([]byte("ok"))
	})
	f, _ := newFetcher(Options{Client: s.Client()})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, b, err := f.Get(context.Background(), s.URL+"/same")
			if err == nil && string(b) != "ok" {
				err = errors.New("wrong body " + string(b))
			}
			errs <- err
		}()
	}
	// Let the goroutines reach the server before answering.
	testutil.Eventually(t, 10*time.Second, "first request reaches the server", func() bool { return s.hits.Load() > 0 })
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if h := s.hits.Load(); h != 1 {
		t.Fatalf("server hit %d times, want 1", h)
	}
}

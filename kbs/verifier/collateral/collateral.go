// Package collateral fetches attestation collateral (AMD KDS certificates and
// CRLs, Intel PCS/PCCS TCB info, QE identity, PCK CRLs) for the TEE verifiers.
//
// A Get looks, in order, in:
//  1. the offline directory (Options.Dir), filled by an administrator for
//     air-gapped sites; its files never expire here (the verifiers check the
//     validity dates inside the collateral itself);
//  2. an in-memory cache and an optional on-disk cache (Options.CacheDir),
//     whose entries expire as the server's Cache-Control / Expires said;
//  3. the network, over HTTPS only, with bounded response sizes, retries that
//     honour 429/503 + Retry-After, and the caller's context deadline.
//
// With Options.Offline the network is never used and a miss names the file
// the administrator has to provide.
//
// Offline directory layout: the URL without scheme, as a path under Dir. A
// query string, if any, is appended to the last path element after an "@",
// with its parameters sorted by name (url.Values.Encode). Response headers
// a verifier needs (Intel's issuer-chain headers) go in a sibling file with
// the suffix ".headers", in "Name: value" lines. OfflinePath computes it:
//
//	https://kdsintf.amd.com/vcek/v1/Milan/cert_chain
//	  -> DIR/kdsintf.amd.com/vcek/v1/Milan/cert_chain
//	https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00806f050000
//	  -> DIR/api.trustedservices.intel.com/tdx/certification/v4/tcb@fmspc=00806f050000
//	     (+ tcb@fmspc=00806f050000.headers holding TCB-Info-Issuer-Chain: ...)
package collateral

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/cloak-containers/cloak/internal/atomicfile"
)

// Limits on what a collateral server may send. Real collateral is far
// smaller: a VCEK is ~1.4 KiB, AMD's CRLs ~1 KiB, Intel's TCB info ~10 KiB.
const (
	MaxResponseSize = 4 << 20
	MaxHeaderFile   = 64 << 10
	// MaxAttempts bounds network attempts for one Get.
	MaxAttempts = 4
	// MaxRetryAfter is the longest Retry-After the fetcher waits for; a
	// server asking for more fails the Get with a message saying so.
	MaxRetryAfter = 2 * time.Minute
	// DefaultTTL applies when a response carries no freshness information.
	DefaultTTL = time.Hour
	// maxMemEntries bounds the in-memory cache; the oldest entry is evicted.
	maxMemEntries = 1024
)

// HeadersSuffix is appended to an offline or cached file's name for the file
// holding the response headers.
const HeadersSuffix = ".headers"

// Options configures a Fetcher. The zero value fetches from the network with
// http.DefaultClient and caches in memory only.
type Options struct {
	Dir      string // offline collateral directory, consulted first ("" = none)
	CacheDir string // on-disk cache ("" = memory only)
	Offline  bool   // never use the network
	Client   *http.Client
	Now      func() time.Time
}

// Fetcher gets collateral by URL. It is safe for concurrent use; concurrent
// Gets of one URL share a single network request.
type Fetcher struct {
	opts  Options
	group singleflight.Group

	mu    sync.Mutex
	mem   map[string]entry
	order []string // insertion order, for eviction

	// sleep waits between attempts; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
	// backoff is the first wait after a failure without Retry-After.
	backoff time.Duration
}

type entry struct {
	Header  http.Header `json:"header"`
	Body    []byte      `json:"-"`
	Expires time.Time   `json:"expires"`
	URL     string      `json:"url"`
	Sum     string      `json:"sha256"` // of Body, detects a torn cache pair
}

// New returns a Fetcher.
func New(o Options) *Fetcher {
	if o.Client == nil {
		o.Client = http.DefaultClient
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Fetcher{opts: o, mem: map[string]entry{}, sleep: sleepCtx, backoff: time.Second}
}

// MissingError is returned in offline mode when no local copy exists.
type MissingError struct {
	URL  string
	Path string // where the offline directory should hold it ("" if no Dir)
}

func (e *MissingError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("collateral %s is not available offline and no offline collateral directory is configured: configure one and put the file there", e.URL)
	}
	return fmt.Sprintf("collateral %s is not available offline: download it and save it as %s", e.URL, e.Path)
}

// HTTPError is a final non-2xx answer of a collateral server.
type HTTPError struct {
	URL    string
	Status int
	Body   string // first bytes of the answer, for the operator
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("collateral server answered %d for %s", e.Status, e.URL)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// Get returns the headers and body of the collateral at rawURL.
func (f *Fetcher) Get(ctx context.Context, rawURL string) (http.Header, []byte, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, nil, fmt.Errorf("collateral URL %q is not an absolute https URL", rawURL)
	}
	key := canonicalURL(u)
	if f.opts.Dir != "" {
		p, err := OfflinePath(f.opts.Dir, key)
		if err != nil {
			return nil, nil, err
		}
		h, b, err := readFiles(p)
		if err == nil {
			return h, b, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("read offline collateral for %s: %w", key, err)
		}
	}
	if e, ok := f.cached(key); ok {
		return e.Header.Clone(), e.Body, nil
	}
	if f.opts.Offline {
		me := &MissingError{URL: key}
		if f.opts.Dir != "" {
			me.Path, _ = OfflinePath(f.opts.Dir, key)
		}
		return nil, nil, me
	}
	if u.Scheme != "https" {
		return nil, nil, fmt.Errorf("collateral URL %q is not https: collateral is only fetched over TLS", rawURL)
	}
	ch := f.group.DoChan(key, func() (any, error) { return f.fetch(ctx, key) })
	select {
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("fetch collateral %s: %w", key, ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, nil, r.Err
		}
		e := r.Val.(entry)
		return e.Header.Clone(), e.Body, nil
	}
}

// OfflinePath is where the offline directory dir holds the collateral of
// rawURL (see the package comment). It refuses URLs whose path would leave dir.
func OfflinePath(dir, rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("collateral URL %q is not absolute", rawURL)
	}
	p := u.EscapedPath()
	if strings.Contains(u.Host, "/") || strings.HasPrefix(u.Host, ".") {
		return "", fmt.Errorf("collateral URL %q has an unusable host", rawURL)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." || seg == "." {
			return "", fmt.Errorf("collateral URL %q has a %q path segment", rawURL, seg)
		}
	}
	rel := path.Join(u.Host, p)
	if q := u.Query(); len(q) > 0 {
		rel += "@" + q.Encode()
	}
	if rel == u.Host {
		return "", fmt.Errorf("collateral URL %q has no path", rawURL)
	}
	return filepath.Join(dir, filepath.FromSlash(rel)), nil
}

func canonicalURL(u *url.URL) string {
	c := *u
	c.Fragment = ""
	c.RawQuery = u.Query().Encode()
	return c.String()
}

func (f *Fetcher) cached(key string) (entry, bool) {
	now := f.opts.Now()
	f.mu.Lock()
	e, ok := f.mem[key]
	f.mu.Unlock()
	if ok && now.Before(e.Expires) {
		return e, true
	}
	if f.opts.CacheDir == "" {
		return entry{}, false
	}
	e, err := f.readDisk(key)
	if err != nil || !now.Before(e.Expires) {
		return entry{}, false
	}
	f.remember(key, e)
	return e, true
}

func (f *Fetcher) remember(key string, e entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mem[key]; !ok {
		f.order = append(f.order, key)
	}
	f.mem[key] = e
	for len(f.order) > maxMemEntries {
		delete(f.mem, f.order[0])
		f.order = f.order[1:]
	}
}

func (f *Fetcher) fetch(ctx context.Context, key string) (any, error) {
	var last error
	wait := f.backoff
	for attempt := 1; attempt <= MaxAttempts; attempt++ {
		e, retryAfter, err := f.once(ctx, key)
		if err == nil {
			if !e.Expires.IsZero() {
				f.remember(key, e)
				if f.opts.CacheDir != "" {
					// The cache only saves later fetches; failing to write it
					// must not fail this one.
					_ = f.writeDisk(key, e)
				}
			}
			return e, nil
		}
		last = err
		if retryAfter < 0 || attempt == MaxAttempts {
			break
		}
		d := wait
		if retryAfter > 0 {
			d = retryAfter
		}
		if d > MaxRetryAfter {
			return nil, fmt.Errorf("%w; the server asked to retry after %s, longer than the %s this KBS waits: try again later or provide the collateral offline", err, d, MaxRetryAfter)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return nil, fmt.Errorf("%w; retrying after %s would pass the request deadline: try again later or provide the collateral offline", err, d)
		}
		if err := f.sleep(ctx, d); err != nil {
			return nil, fmt.Errorf("fetch collateral %s: %w (after: %v)", key, err, last)
		}
		wait *= 2
	}
	return nil, fmt.Errorf("fetch collateral %s: %w", key, last)
}

// once makes one request. retryAfter < 0 means do not retry, 0 means retry
// with backoff, > 0 means retry after that long.
func (f *Fetcher) once(ctx context.Context, key string) (entry, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, key, nil)
	if err != nil {
		return entry{}, -1, err
	}
	resp, err := f.opts.Client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return entry{}, -1, err
		}
		return entry{}, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize+1))
	if err != nil {
		return entry{}, 0, fmt.Errorf("read answer of %s: %w", key, err)
	}
	if len(body) > MaxResponseSize {
		return entry{}, -1, fmt.Errorf("answer of %s is larger than %d bytes", key, MaxResponseSize)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		he := &HTTPError{URL: key, Status: resp.StatusCode, Body: snippet(body)}
		switch {
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
			return entry{}, retryAfterOf(resp.Header, f.opts.Now()), he
		case resp.StatusCode >= 500:
			return entry{}, 0, he
		default:
			return entry{}, -1, he
		}
	}
	e := entry{URL: key, Header: resp.Header.Clone(), Body: body}
	e.Expires = expiry(resp.Header, f.opts.Now())
	return e, 0, nil
}

func snippet(b []byte) string {
	const n = 200
	s := strings.ToValidUTF8(string(b), "?")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return strings.TrimSpace(s)
}

// retryAfterOf reads Retry-After (seconds or an HTTP date); 0 if absent.
func retryAfterOf(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s >= 0 {
		if s > int64(24*time.Hour/time.Second) {
			s = int64(24 * time.Hour / time.Second)
		}
		return max(time.Duration(s)*time.Second, time.Millisecond)
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), time.Millisecond)
	}
	return 0
}

// expiry is when a response stops being fresh: zero means do not cache.
func expiry(h http.Header, now time.Time) time.Time {
	for _, d := range strings.Split(h.Get("Cache-Control"), ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		switch {
		case d == "no-store" || d == "no-cache":
			return time.Time{}
		case strings.HasPrefix(d, "max-age="):
			s, err := strconv.ParseInt(strings.Trim(d[len("max-age="):], `"`), 10, 64)
			if err != nil || s <= 0 {
				return time.Time{}
			}
			return now.Add(time.Duration(min(s, int64(365*24*time.Hour/time.Second))) * time.Second)
		}
	}
	if v := h.Get("Expires"); v != "" {
		t, err := http.ParseTime(v)
		if err != nil || !t.After(now) {
			return time.Time{}
		}
		return t
	}
	return now.Add(DefaultTTL)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// readFiles reads an offline body and its optional headers file.
func readFiles(p string) (http.Header, []byte, error) {
	body, err := readBounded(p, MaxResponseSize)
	if err != nil {
		return nil, nil, err
	}
	hb, err := readBounded(p+HeadersSuffix, MaxHeaderFile)
	if errors.Is(err, fs.ErrNotExist) {
		return http.Header{}, body, nil
	}
	if err != nil {
		return nil, nil, err
	}
	r := textproto.NewReader(bufio.NewReader(io.MultiReader(bytes.NewReader(hb), strings.NewReader("\r\n\r\n"))))
	mh, err := r.ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("%s: want \"Name: value\" lines: %w", p+HeadersSuffix, err)
	}
	return http.Header(mh), body, nil
}

func readBounded(p string, limit int64) ([]byte, error) {
	fh, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, limit)
	}
	return b, nil
}

func (f *Fetcher) diskPath(key string) string {
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(f.opts.CacheDir, hex.EncodeToString(sum[:]))
}

func (f *Fetcher) readDisk(key string) (entry, error) {
	p := f.diskPath(key)
	meta, err := readBounded(p+".json", MaxHeaderFile)
	if err != nil {
		return entry{}, err
	}
	var e entry
	if err := json.Unmarshal(meta, &e); err != nil {
		return entry{}, err
	}
	if e.URL != key {
		return entry{}, fmt.Errorf("cache file %s is for %s", p, e.URL)
	}
	if e.Body, err = readBounded(p, MaxResponseSize); err != nil {
		return entry{}, err
	}
	if sum := sha256.Sum256(e.Body); hex.EncodeToString(sum[:]) != e.Sum {
		return entry{}, fmt.Errorf("cache file %s does not match its metadata", p)
	}
	return e, nil
}

// writeDisk writes body then metadata, each atomically; the metadata holds
// the body's digest so readDisk treats a torn pair as a miss.
func (f *Fetcher) writeDisk(key string, e entry) error {
	sum := sha256.Sum256(e.Body)
	e.Sum = hex.EncodeToString(sum[:])
	if err := os.MkdirAll(f.opts.CacheDir, 0o700); err != nil {
		return err
	}
	meta, err := json.Marshal(e)
	if err != nil {
		return err
	}
	p := f.diskPath(key)
	if err := atomicfile.Write(p, e.Body, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(p+".json", meta, 0o600)
}

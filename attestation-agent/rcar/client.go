// Package rcar is the attestation agent's KBS client. It runs Trustee's
// Request-Challenge-Attestation-Response handshake (protocol 0.4.0), keeps
// the resulting attestation token, and fetches resources that the KBS
// encrypts to the agent's TEE key.
package rcar

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/teekey"
)

// The defaults keep a KBS outage inside the shim's agent timeout (120 s in
// CI, 180 s by default): the guest gives up after at most defaultBudget, so
// its own error, not a host-side deadline, reaches the user. Against a
// refused port, six attempts span about 4-8 s, enough for a KBS restart;
// longer outages are left to the kubelet's own back-off. Against a KBS
// that never answers, three requests of up to 10 s fill the 30 s.
const (
	defaultRetries        = 5
	defaultBackoff        = 250 * time.Millisecond
	maxBackoff            = 5 * time.Second
	defaultRequestTimeout = 10 * time.Second
	defaultBudget         = 30 * time.Second
	// tokenMargin makes the agent re-attest a little before its token
	// expires, so a request never leaves with a token that dies in flight.
	tokenMargin = 30 * time.Second
)

// tokenAlgs are the signature algorithms a KBS may sign its EAR token with.
// The agent only reads the token's expiry; it never trusts the claims.
var tokenAlgs = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
}

// Config configures a Client.
type Config struct {
	// URL is the KBS base URL, e.g. "https://kbs.example:8080".
	URL string
	// CACertPEM is the KBS's certificate or its CA (PEM). Empty means the
	// system roots. Ignored when HTTPClient is set.
	CACertPEM []byte
	// Provider produces the evidence. Required.
	Provider evidence.Provider
	// Key is the TEE key resources are encrypted to; nil means a new P-256 key.
	Key *teekey.Key
	// InitData, if set, is sent with the evidence (its digest is bound by
	// hardware TEEs; the KBS checks it).
	InitData *kbstypes.InitData
	// HTTPClient replaces the default client (its cookie jar, if nil, is
	// replaced by a private one on a copy).
	HTTPClient *http.Client
	// Retries is how often a request is retried after a network error, a
	// timeout, a 5xx or a 429 answer (waiting at least its Retry-After): 0
	// means 5, negative means never. Other refusals (4xx) and untrusted
	// certificates are never retried.
	Retries int
	// Backoff is the delay before the first retry, doubled for each further
	// one up to 5s (with jitter); 0 means 250ms.
	Backoff time.Duration
	// RequestTimeout bounds one HTTP request, from dialling to the last
	// byte of the answer; 0 means 10s.
	RequestTimeout time.Duration
	// Budget bounds one call of Attest, Token or GetResource with all its
	// requests and retries; 0 means 30s. It must end well before the
	// host's deadline for the operation that needs the KBS.
	Budget time.Duration
	// Now is the clock used for token expiry; nil means time.Now.
	Now func() time.Time
}

// Client talks to one KBS. It is safe for concurrent use; concurrent callers
// share one attestation.
type Client struct {
	base     string
	http     *http.Client
	provider evidence.Provider
	key      *teekey.Key
	initData *kbstypes.InitData
	retries  int
	backoff  time.Duration
	timeout  time.Duration // per request
	budget   time.Duration // per call
	now      func() time.Time

	mu    sync.Mutex // serialises attestation; guards token and exp
	token string
	exp   time.Time // zero when the token carries no expiry
}

// New checks cfg and returns a client. It does not contact the KBS.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("KBS URL %q: want http(s)://host[:port]", cfg.URL)
	}
	if cfg.Provider == nil {
		return nil, errors.New("rcar: no evidence provider configured")
	}
	c := &Client{
		base:     strings.TrimSuffix(cfg.URL, "/"),
		provider: cfg.Provider,
		key:      cfg.Key,
		initData: cfg.InitData,
		retries:  cfg.Retries,
		backoff:  cfg.Backoff,
		timeout:  cfg.RequestTimeout,
		budget:   cfg.Budget,
		now:      cfg.Now,
	}
	switch {
	case c.retries == 0:
		c.retries = defaultRetries
	case c.retries < 0:
		c.retries = 0
	}
	if c.backoff <= 0 {
		c.backoff = defaultBackoff
	}
	if c.timeout <= 0 {
		c.timeout = defaultRequestTimeout
	}
	if c.budget <= 0 {
		c.budget = defaultBudget
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.key == nil {
		if c.key, err = teekey.New(teekey.ECDHES); err != nil {
			return nil, err
		}
	}
	if c.http, err = httpClient(cfg); err != nil {
		return nil, err
	}
	return c, nil
}

func httpClient(cfg Config) (*http.Client, error) {
	var hc http.Client
	if cfg.HTTPClient != nil {
		hc = *cfg.HTTPClient
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		// Each request carries its own deadline (Config.RequestTimeout);
		// a separate handshake timeout would race it with another message.
		tr.TLSHandshakeTimeout = 0
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if len(cfg.CACertPEM) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cfg.CACertPEM) {
				return nil, errors.New("KBS certificate: no PEM certificate found; pass the KBS's certificate or CA in PEM form")
			}
			tr.TLSClientConfig.RootCAs = pool
		}
		hc = http.Client{Transport: tr}
	}
	if hc.Jar == nil {
		jar, err := cookiejar.New(nil)
		if err != nil {
			return nil, fmt.Errorf("create cookie jar: %w", err)
		}
		hc.Jar = jar
	}
	return &hc, nil
}

// TEEKey returns the key resources are encrypted to.
func (c *Client) TEEKey() *teekey.Key { return c.key }

// call is one public method's share of time: every request it makes,
// attestation included, ends by deadline (Config.Budget after start).
type call struct {
	start, deadline time.Time
}

// errBudgetSpent is the cause of a call's context ending at its deadline.
var errBudgetSpent = errors.New("the KBS client's time budget is spent")

// begin starts a call: the returned context ends at the call's deadline.
func (c *Client) begin(ctx context.Context) (context.Context, call, context.CancelFunc) {
	start := time.Now()
	cl := call{start: start, deadline: start.Add(c.budget)}
	ctx, cancel := context.WithDeadlineCause(ctx, cl.deadline, errBudgetSpent)
	return ctx, cl, cancel
}

// Attest runs a fresh attestation and returns the new token.
func (c *Client) Attest(ctx context.Context) (string, error) {
	ctx, cl, cancel := c.begin(ctx)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attestLocked(ctx, cl)
}

// Token returns the cached token while it is valid, attesting otherwise.
func (c *Client) Token(ctx context.Context) (string, error) {
	ctx, cl, cancel := c.begin(ctx)
	defer cancel()
	return c.validToken(ctx, cl)
}

func (c *Client) validToken(ctx context.Context, cl call) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && (c.exp.IsZero() || c.now().Add(tokenMargin).Before(c.exp)) {
		return c.token, nil
	}
	return c.attestLocked(ctx, cl)
}

// refreshToken re-attests unless another caller already replaced stale.
func (c *Client) refreshToken(ctx context.Context, cl call, stale string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && c.token != stale {
		return c.token, nil
	}
	return c.attestLocked(ctx, cl)
}

func (c *Client) attestLocked(ctx context.Context, cl call) (string, error) {
	c.token, c.exp = "", time.Time{}
	var token string
	err := c.withRetries(ctx, cl, func() error {
		var err error
		token, err = c.attestOnce(ctx)
		return err
	})
	if err != nil {
		return "", err
	}
	exp, err := tokenExpiry(token)
	if err != nil {
		return "", err
	}
	c.token, c.exp = token, exp
	return token, nil
}

// attestOnce runs auth -> attest on a fresh session; a retry restarts both
// steps because the KBS may already have used up the first nonce.
func (c *Client) attestOnce(ctx context.Context) (string, error) {
	body, err := json.Marshal(kbstypes.Request{
		Version:     kbstypes.ProtocolVersion,
		Tee:         c.provider.Tee(),
		ExtraParams: json.RawMessage(`{}`),
	})
	if err != nil {
		return "", fmt.Errorf("encode auth request: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/kbs/v0/auth", "attestation request (auth)", body, "")
	if err != nil {
		return "", err
	}
	var ch kbstypes.Challenge
	if err := json.Unmarshal(resp, &ch); err != nil || ch.Nonce == "" {
		return "", fmt.Errorf("KBS at %s sent no usable challenge (want {\"nonce\":...}): %.100q", c.base, resp)
	}
	pub := c.key.PublicJWK()
	reportData, err := kbstypes.RuntimeDataDigest("", ch.Nonce, pub)
	if err != nil {
		return "", fmt.Errorf("compute report data: %w", err)
	}
	ev, err := c.provider.Evidence(ctx, reportData)
	if err != nil {
		return "", fmt.Errorf("get %s evidence: %w", c.provider.Tee(), err)
	}
	body, err = json.Marshal(kbstypes.Attestation{
		InitData:    c.initData,
		RuntimeData: kbstypes.RuntimeData{Nonce: ch.Nonce, TeePubKey: pub},
		TeeEvidence: kbstypes.TeeEvidence{PrimaryEvidence: ev},
	})
	if err != nil {
		return "", fmt.Errorf("encode attestation: %w", err)
	}
	resp, err = c.do(ctx, http.MethodPost, "/kbs/v0/attest", "attestation", body, "")
	if err != nil {
		return "", err
	}
	var tok kbstypes.AttestationToken
	if err := json.Unmarshal(resp, &tok); err != nil || tok.Token == "" {
		return "", fmt.Errorf("KBS at %s answered the attestation without a token (want {\"token\":...}): %.100q", c.base, resp)
	}
	return tok.Token, nil
}

// tokenExpiry reads the unverified "exp" of a JWT; zero if it has none.
func tokenExpiry(token string) (time.Time, error) {
	var claims jwt.Claims
	if err := TokenClaims(token, &claims); err != nil {
		return time.Time{}, err
	}
	if claims.Expiry == nil {
		return time.Time{}, nil
	}
	return claims.Expiry.Time(), nil
}

// GetResource returns the plaintext of a KBS resource, attesting first when
// there is no valid token and once more if the KBS answers 401. When the
// KBS cannot be reached within the client's retries and budget, the error
// is an *UnreachableError.
func (c *Client) GetResource(ctx context.Context, p kbstypes.ResourcePath) ([]byte, error) {
	if _, err := kbstypes.ParseResourcePath(p.String()); err != nil {
		return nil, err
	}
	ctx, cl, cancel := c.begin(ctx)
	defer cancel()
	token, err := c.validToken(ctx, cl)
	if err != nil {
		return nil, err
	}
	body, err := c.fetch(ctx, cl, p, token)
	var ke *KBSError
	if errors.As(err, &ke) && ke.Status == http.StatusUnauthorized {
		if token, err = c.refreshToken(ctx, cl, token); err != nil {
			return nil, err
		}
		body, err = c.fetch(ctx, cl, p, token)
	}
	if err != nil {
		return nil, err
	}
	plain, err := c.key.Decrypt(body)
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", p, err)
	}
	return plain, nil
}

func (c *Client) fetch(ctx context.Context, cl call, p kbstypes.ResourcePath, token string) ([]byte, error) {
	var body []byte
	err := c.withRetries(ctx, cl, func() error {
		var err error
		body, err = c.do(ctx, http.MethodGet, "/kbs/v0/resource/"+p.String(), "resource "+p.String(), nil, token)
		return err
	})
	return body, err
}

// transportError is a failure to get an answer from the KBS at all.
type transportError struct {
	base string
	op   string
	err  error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("cannot reach KBS at %s: %s: %v", e.base, e.op, e.err)
}

func (e *transportError) Unwrap() error { return e.err }

// timeoutError is a request the KBS did not answer in time: its own
// timeout, or what was left of the call's budget.
type timeoutError struct{ after time.Duration }

func (e *timeoutError) Error() string {
	return fmt.Sprintf("timed out after %v waiting for the KBS's response", e.after.Round(10*time.Millisecond))
}

func (e *timeoutError) Timeout() bool { return true }

// do sends one request and returns the body of a 2xx answer. ctx is the
// call's; the request gets at most the client's request timeout of it.
func (c *Client) do(ctx context.Context, method, path, op string, body []byte, bearer string) ([]byte, error) {
	reqCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("build request for %s: %w", op, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportFailure(ctx, reqCtx, op, start, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, kbstypes.MaxResponseBody+1))
	if err != nil {
		return nil, c.transportFailure(ctx, reqCtx, op, start, fmt.Errorf("read answer: %w", err))
	}
	if len(data) > kbstypes.MaxResponseBody {
		return nil, fmt.Errorf("KBS answer to %s is larger than %d bytes; refusing it", op, kbstypes.MaxResponseBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		ke := kbsError(op, resp.StatusCode, data)
		ke.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		return nil, ke
	}
	return data, nil
}

// transportFailure classifies a request that got no usable answer: the
// caller gave up (not retried), the request or the call ran out of time,
// or the network failed.
func (c *Client) transportFailure(callCtx, reqCtx context.Context, op string, start time.Time, err error) error {
	if callCtx.Err() != nil && !errors.Is(context.Cause(callCtx), errBudgetSpent) {
		return fmt.Errorf("%s: %w", op, callCtx.Err())
	}
	if reqCtx.Err() != nil {
		err = &timeoutError{after: time.Since(start)}
	}
	// The URL is in the message already; keep the cause.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return &transportError{base: c.base, op: op, err: err}
}

// retryable reports whether err may go away by itself: network failures,
// timeouts, server-side (5xx) errors and rate limits (429). A KBS refusal
// (other 4xx) or a certificate the agent does not trust will not.
func retryable(err error) bool {
	var ke *KBSError
	if errors.As(err, &ke) {
		return ke.Status >= 500 || ke.Status == http.StatusTooManyRequests
	}
	var te *transportError
	if !errors.As(err, &te) {
		return false
	}
	var certErr *tls.CertificateVerificationError
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	var invalidErr x509.CertificateInvalidError
	return !errors.As(err, &certErr) && !errors.As(err, &hostErr) &&
		!errors.As(err, &authErr) && !errors.As(err, &invalidErr)
}

// withRetries runs fn until it succeeds, fails in a way retrying cannot
// fix, or the retries or the call's budget run out (*UnreachableError).
func (c *Client) withRetries(ctx context.Context, cl call, fn func() error) error {
	delay := c.backoff
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !retryable(err) {
			return err
		}
		unreachable := func() error {
			return &UnreachableError{URL: c.base, Attempts: attempt, Elapsed: time.Since(cl.start), Last: err}
		}
		// Full delay halved plus random jitter, so many guests restarted
		// together do not hammer the KBS in lockstep.
		wait := delay/2 + rand.N(delay/2+1)
		// A KBS that says when to come back (rate limit, busy) is
		// believed: earlier would only be refused again.
		var ke *KBSError
		if errors.As(err, &ke) && ke.RetryAfter > wait {
			wait = ke.RetryAfter + rand.N(delay/2+1)
		}
		if attempt > c.retries || time.Until(cl.deadline) <= wait {
			return unreachable()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(context.Cause(ctx), errBudgetSpent) {
				return unreachable()
			}
			return fmt.Errorf("%w (gave up retrying: %w)", err, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, maxBackoff)
	}
}

// TokenClaims decodes the claims of a KBS token into v without verifying
// the signature: for display only, never for decisions.
func TokenClaims(token string, v any) error {
	parsed, err := jwt.ParseSigned(token, tokenAlgs)
	if err != nil {
		return fmt.Errorf("KBS token is not a signed JWT: %w", err)
	}
	if err := parsed.UnsafeClaimsWithoutVerification(v); err != nil {
		return fmt.Errorf("read KBS token claims: %w", err)
	}
	return nil
}

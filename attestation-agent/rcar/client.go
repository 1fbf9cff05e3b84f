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

	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/teekey"
	"github.com/cloak-containers/cloak/kbstypes"
)

const (
	defaultRetries = 3
	defaultBackoff = 250 * time.Millisecond
	maxBackoff     = 5 * time.Second
	requestTimeout = 30 * time.Second
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
	// Retries is how often a request is retried after a network error or a
	// 5xx answer: 0 means 3, negative means never.
	Retries int
	// Backoff is the delay before the first retry, doubled for each further
	// one (with jitter); 0 means 250ms.
	Backoff time.Duration
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
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if len(cfg.CACertPEM) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cfg.CACertPEM) {
				return nil, errors.New("KBS certificate: no PEM certificate found; pass the KBS's certificate or CA in PEM form")
			}
			tr.TLSClientConfig.RootCAs = pool
		}
		hc = http.Client{Transport: tr, Timeout: requestTimeout}
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

// Attest runs a fresh attestation and returns the new token.
func (c *Client) Attest(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attestLocked(ctx)
}

// Token returns the cached token while it is valid, attesting otherwise.
func (c *Client) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && (c.exp.IsZero() || c.now().Add(tokenMargin).Before(c.exp)) {
		return c.token, nil
	}
	return c.attestLocked(ctx)
}

// refreshToken re-attests unless another caller already replaced stale.
func (c *Client) refreshToken(ctx context.Context, stale string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && c.token != stale {
		return c.token, nil
	}
	return c.attestLocked(ctx)
}

func (c *Client) attestLocked(ctx context.Context) (string, error) {
	c.token, c.exp = "", time.Time{}
	var token string
	err := c.withRetries(ctx, func() error {
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
	reportData, err := kbstypes.ReportData("", ch.Nonce, pub)
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
// there is no valid token and once more if the KBS answers 401.
func (c *Client) GetResource(ctx context.Context, p kbstypes.ResourcePath) ([]byte, error) {
	if _, err := kbstypes.ParseResourcePath(p.String()); err != nil {
		return nil, err
	}
	token, err := c.Token(ctx)
	if err != nil {
		return nil, err
	}
	body, err := c.fetch(ctx, p, token)
	var ke *KBSError
	if errors.As(err, &ke) && ke.Status == http.StatusUnauthorized {
		if token, err = c.refreshToken(ctx, token); err != nil {
			return nil, err
		}
		body, err = c.fetch(ctx, p, token)
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

func (c *Client) fetch(ctx context.Context, p kbstypes.ResourcePath, token string) ([]byte, error) {
	var body []byte
	err := c.withRetries(ctx, func() error {
		var err error
		body, err = c.do(ctx, http.MethodGet, "/kbs/v0/resource/"+p.String(), "resource "+p.String(), nil, token)
		return err
	})
	return body, err
}

// transportError is a failure to get an answer from the KBS at all.
type transportError struct {
	base string
	err  error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("cannot reach KBS at %s: %v", e.base, e.err)
}

func (e *transportError) Unwrap() error { return e.err }

// do sends one request and returns the body of a 2xx answer.
func (c *Client) do(ctx context.Context, method, path, op string, body []byte, bearer string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
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
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", op, ctx.Err())
		}
		return nil, &transportError{base: c.base, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, kbstypes.MaxResponseBody+1))
	if err != nil {
		return nil, &transportError{base: c.base, err: fmt.Errorf("read answer to %s: %w", op, err)}
	}
	if len(data) > kbstypes.MaxResponseBody {
		return nil, fmt.Errorf("KBS answer to %s is larger than %d bytes; refusing it", op, kbstypes.MaxResponseBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, kbsError(op, resp.StatusCode, data)
	}
	return data, nil
}

// retryable reports whether err may go away by itself: network failures and
// server-side (5xx) errors. A KBS refusal (4xx) or a certificate the agent
// does not trust will not.
func retryable(err error) bool {
	var ke *KBSError
	if errors.As(err, &ke) {
		return ke.Status >= 500
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

func (c *Client) withRetries(ctx context.Context, fn func() error) error {
	delay := c.backoff
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || attempt >= c.retries || !retryable(err) {
			return err
		}
		// Full delay halved plus random jitter, so many guests restarted
		// together do not hammer the KBS in lockstep.
		wait := delay/2 + rand.N(delay/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
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

// Package adminclient is the client of the KBS admin API (api/adminapi):
// it signs each request with a fresh EdDSA admin token, enforces response
// size limits and turns RFC 7807 problem bodies into typed errors. It also
// reads and writes admin key files and explains audit entries in prose.
package adminclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

// TokenLifetime is how long each admin token is valid. Tokens are minted per
// request, so a short lifetime only has to cover clock skew and transit.
const TokenLifetime = 5 * time.Minute

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// Client talks to one KBS's admin API. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	key   ed25519.PrivateKey
	role  string
	caPEM []byte
	http  *http.Client
	now   func() time.Time
}

// Option configures a Client.
type Option func(*Client)

// WithCACert trusts the PEM certificates in pem (e.g. the KBS's
// DATA_DIR/tls/cert.pem) instead of the system roots.
func WithCACert(pem []byte) Option { return func(c *Client) { c.caPEM = pem } }

// WithRole sets the token's role claim. By default tokens carry none and the
// KBS grants the role of the key (admin or auditor); a claim can only narrow
// that role, so WithRole(adminapi.RoleAuditor) makes an admin key read-only.
func WithRole(role string) Option { return func(c *Client) { c.role = role } }

// WithHTTPClient replaces the HTTP client; WithCACert is then ignored.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.http = hc } }

// WithClock sets the clock used for token iat/exp.
func WithClock(now func() time.Time) Option { return func(c *Client) { c.now = now } }

// New returns a client for the KBS at baseURL (e.g. https://127.0.0.1:8080)
// that signs its requests with key.
func New(baseURL string, key ed25519.PrivateKey, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("KBS URL %q: want https://HOST:PORT", baseURL)
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("admin key: want an Ed25519 private key")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &Client{base: u, key: key, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	if c.http == nil {
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.caPEM != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(c.caPEM) {
				return nil, errors.New("CA certificate: no PEM CERTIFICATE block found")
			}
			tlsConf.RootCAs = pool
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsConf
		c.http = &http.Client{Transport: tr}
	}
	return c, nil
}

// MintToken returns an admin token: an EdDSA JWT with iat = now, exp = now +
// TokenLifetime and, unless role is empty, the role claim. Client mints one per request; it is
// exported for tools that call the admin API themselves (curl).
func MintToken(key ed25519.PrivateKey, role string, now time.Time) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("admin token signer: %w", err)
	}
	std := jwt.Claims{
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(TokenLifetime)),
	}
	b := jwt.Signed(signer).Claims(std)
	if role != "" {
		b = b.Claims(map[string]any{"role": role})
	}
	tok, err := b.Serialize()
	if err != nil {
		return "", fmt.Errorf("sign admin token: %w", err)
	}
	return tok, nil
}

// do sends one request and returns the body of a 2xx answer, read up to
// limit bytes; anything else becomes an error.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, contentType string, body []byte, limit int64) ([]byte, error) {
	tok, err := MintToken(c.key, c.role, c.now())
	if err != nil {
		return nil, err
	}
	u := *c.base
	u.Path += path
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, parseError(method, u.Path, resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s %s: response larger than %d bytes", method, path, limit)
	}
	return data, nil
}

func (c *Client) getJSON(ctx context.Context, path string, query url.Values, out any) error {
	data, err := c.do(ctx, http.MethodGet, path, query, "", nil, kbstypes.MaxResponseBody)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("GET %s: decode response: %w", path, err)
	}
	return nil
}

func (c *Client) postJSON(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("POST %s: encode request: %w", path, err)
	}
	data, err := c.do(ctx, http.MethodPost, path, nil, "application/json", body, kbstypes.MaxResponseBody)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("POST %s: decode response: %w", path, err)
	}
	return nil
}

func resourcePath(p string) (string, error) {
	rp, err := kbstypes.ParseResourcePath(p)
	if err != nil {
		return "", err
	}
	return rp.String(), nil
}

// SetResource stores value at path ("repo/type/tag"), replacing any old value.
func (c *Client) SetResource(ctx context.Context, path string, value []byte) (adminapi.ResourceInfo, error) {
	p, err := resourcePath(path)
	if err != nil {
		return adminapi.ResourceInfo{}, err
	}
	if len(value) > kbstypes.MaxResourceSize {
		return adminapi.ResourceInfo{}, fmt.Errorf("resource %s is %d bytes; the KBS stores at most %d", p, len(value), kbstypes.MaxResourceSize)
	}
	data, err := c.do(ctx, http.MethodPost, adminapi.PathResource+p, nil, "application/octet-stream", value, kbstypes.MaxResponseBody)
	if err != nil {
		return adminapi.ResourceInfo{}, err
	}
	var info adminapi.ResourceInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return adminapi.ResourceInfo{}, fmt.Errorf("POST %s%s: decode response: %w", adminapi.PathResource, p, err)
	}
	return info, nil
}

// DeleteResource removes the resource at path.
func (c *Client) DeleteResource(ctx context.Context, path string) error {
	p, err := resourcePath(path)
	if err != nil {
		return err
	}
	_, err = c.do(ctx, http.MethodDelete, adminapi.PathResource+p, nil, "", nil, maxErrorBody)
	return err
}

// GetResource returns the stored value at path, unencrypted (admin role only).
func (c *Client) GetResource(ctx context.Context, path string) ([]byte, error) {
	p, err := resourcePath(path)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, http.MethodGet, adminapi.PathAdminResource+p, nil, "", nil, kbstypes.MaxResourceSize)
}

// ListResources describes every stored resource, sorted by path.
func (c *Client) ListResources(ctx context.Context) ([]adminapi.ResourceInfo, error) {
	var l adminapi.ResourceList
	if err := c.getJSON(ctx, adminapi.PathResources, nil, &l); err != nil {
		return nil, err
	}
	return l.Resources, nil
}

// SetResourcePolicy replaces the resource-release policy with rego.
func (c *Client) SetResourcePolicy(ctx context.Context, rego []byte) error {
	return c.postJSON(ctx, adminapi.PathResourcePolicy, EncodePolicy("", rego), nil)
}

// GetResourcePolicy returns the resource-release policy.
func (c *Client) GetResourcePolicy(ctx context.Context) (Policy, error) {
	return c.getPolicy(ctx, adminapi.PathResourcePolicy)
}

// SetAttestationPolicy replaces the attestation policy id (usually "default").
func (c *Client) SetAttestationPolicy(ctx context.Context, id string, rego []byte) error {
	if id == "" {
		return errors.New("attestation policy id is empty (the KBS uses \"default\")")
	}
	return c.postJSON(ctx, adminapi.PathAttestationPolicy, EncodePolicy(id, rego), nil)
}

// GetAttestationPolicy returns the attestation policy.
func (c *Client) GetAttestationPolicy(ctx context.Context) (Policy, error) {
	return c.getPolicy(ctx, adminapi.PathAttestationPolicy)
}

func (c *Client) getPolicy(ctx context.Context, path string) (Policy, error) {
	var body adminapi.PolicyBody
	if err := c.getJSON(ctx, path, nil, &body); err != nil {
		return Policy{}, err
	}
	p, err := DecodePolicy(body)
	if err != nil {
		return Policy{}, fmt.Errorf("GET %s: %w", path, err)
	}
	return p, nil
}

// SetReferenceValue replaces the accepted values of name. The KBS refuses
// an empty list (DeleteReferenceValue deletes) and values that do not fit the
// name (adminapi.CheckReferenceValues).
func (c *Client) SetReferenceValue(ctx context.Context, name string, values []string) error {
	return c.PutReferenceValue(ctx, adminapi.ReferenceValue{Name: name, Values: values})
}

// PutReferenceValue sends rv as it is, Custom included.
func (c *Client) PutReferenceValue(ctx context.Context, rv adminapi.ReferenceValue) error {
	if rv.Name == "" {
		return errors.New("reference value name is empty")
	}
	if rv.Values == nil {
		rv.Values = []string{}
	}
	return c.postJSON(ctx, adminapi.PathReferenceValues, rv, nil)
}

// DeleteReferenceValue deletes name and all its values.
func (c *Client) DeleteReferenceValue(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("reference value name is empty")
	}
	_, err := c.do(ctx, http.MethodDelete, adminapi.PathReferenceValues+"/"+url.PathEscape(name), nil, "", nil, maxErrorBody)
	return err
}

// ListReferenceValues returns every reference value name with its values.
func (c *Client) ListReferenceValues(ctx context.Context) (map[string][]string, error) {
	rv, err := c.ReferenceValues(ctx)
	return rv.ReferenceValues, err
}

// ReferenceValues returns every reference value and, for those imported
// from a signed bundle, the bundle and signer.
func (c *Client) ReferenceValues(ctx context.Context) (adminapi.ReferenceValues, error) {
	var rv adminapi.ReferenceValues
	if err := c.getJSON(ctx, adminapi.PathReferenceValues, nil, &rv); err != nil {
		return rv, err
	}
	if rv.ReferenceValues == nil {
		rv.ReferenceValues = map[string][]string{}
	}
	return rv, nil
}

// ImportReferenceValues sends a signed reference-value bundle
// (reference-values.cose); the KBS verifies it and stores all its values or
// none.
func (c *Client) ImportReferenceValues(ctx context.Context, cose []byte) (adminapi.ImportResult, error) {
	var res adminapi.ImportResult
	data, err := c.do(ctx, http.MethodPost, adminapi.PathReferenceImport, nil, adminapi.ContentTypeCOSE, cose, kbstypes.MaxResponseBody)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return res, fmt.Errorf("POST %s: decode response: %w", adminapi.PathReferenceImport, err)
	}
	return res, nil
}

// Audit returns up to limit audit entries with seq greater than after
// (limit 0 lets the KBS choose), only those of kind (adminapi.Kind*) unless
// it is empty.
func (c *Client) Audit(ctx context.Context, after uint64, limit int, kind string) (adminapi.AuditPage, error) {
	q := url.Values{}
	q.Set("after", strconv.FormatUint(after, 10))
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if kind != "" {
		q.Set("kind", kind)
	}
	var page adminapi.AuditPage
	if err := c.getJSON(ctx, adminapi.PathAudit, q, &page); err != nil {
		return adminapi.AuditPage{}, err
	}
	return page, nil
}

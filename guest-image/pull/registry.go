package pull

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// Limits on the registry options a request may carry.
const (
	maxMirrors          = 64
	maxInsecure         = 64
	maxManifestBytes    = 4 << 20
	maxConfigBytes      = 1 << 20
	maxReferenceLength  = 4096
	dockerHubCanonical  = "index.docker.io"
	dockerHubAsWritten  = "docker.io"
	manifestPathSegment = "/manifests/"
)

// registry is where one pull goes: the reference to fetch (rewritten to a
// mirror endpoint when the pod maps its registry) and an HTTP transport
// that enforces the pod's plain-HTTP allow-list and the manifest size limit.
type registry struct {
	ref       name.Reference
	mirror    string // endpoint used instead of the reference's registry, or ""
	transport http.RoundTripper
}

func (r *registry) where() string {
	if r.mirror != "" {
		return r.ref.String() + " via mirror " + r.mirror
	}
	return r.ref.String()
}

func newRegistry(image string, opts *agentapi.RegistryOptions, roots *x509.CertPool) (*registry, error) {
	if image == "" {
		return nil, errors.New("empty image reference")
	}
	if len(image) > maxReferenceLength {
		return nil, fmt.Errorf("reference is %d bytes, limit is %d", len(image), maxReferenceLength)
	}
	if len(opts.GetMirrors()) > maxMirrors || len(opts.GetInsecureRegistries()) > maxInsecure {
		return nil, fmt.Errorf("registry options name %d mirrors and %d insecure registries, limits are %d and %d",
			len(opts.GetMirrors()), len(opts.GetInsecureRegistries()), maxMirrors, maxInsecure)
	}
	for _, r := range opts.GetInsecureRegistries() {
		if _, err := name.NewRegistry(r, name.StrictValidation); err != nil || strings.Contains(r, "/") {
			return nil, fmt.Errorf("insecure registry %q: want host[:port]", r)
		}
	}
	ref, err := name.ParseReference(image)
	if err != nil {
		return nil, err
	}
	regName := ref.Context().RegistryStr()
	plainHTTP := map[string]bool{}
	insecure := slices.Contains(opts.GetInsecureRegistries(), regName) ||
		(regName == dockerHubCanonical && slices.Contains(opts.GetInsecureRegistries(), dockerHubAsWritten))

	r := &registry{ref: ref}
	endpoint, mirrored := opts.GetMirrors()[regName]
	if !mirrored && regName == dockerHubCanonical {
		endpoint, mirrored = opts.GetMirrors()[dockerHubAsWritten]
	}
	if mirrored {
		u, err := parseEndpoint(endpoint)
		if err != nil {
			return nil, fmt.Errorf("mirror for %s: %w", regName, err)
		}
		var nopts []name.Option
		if u.Scheme == "http" {
			nopts = append(nopts, name.Insecure)
			plainHTTP[u.Host] = true
		}
		reg, err := name.NewRegistry(u.Host, nopts...)
		if err != nil {
			return nil, fmt.Errorf("mirror for %s: %w", regName, err)
		}
		repo := reg.Repo(ref.Context().RepositoryStr())
		switch t := ref.(type) {
		case name.Tag:
			r.ref = repo.Tag(t.TagStr())
		case name.Digest:
			r.ref = repo.Digest(t.DigestStr())
		}
		r.mirror = endpoint
	} else if insecure {
		if r.ref, err = name.ParseReference(image, name.Insecure); err != nil {
			return nil, err
		}
		plainHTTP[regName] = true
	}

	base := http.DefaultTransport.(*http.Transport).Clone()
	// The guest's environment is part of the measured image and names no
	// proxy; never let one be picked up.
	base.Proxy = nil
	base.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	r.transport = &guardedTransport{base: base, plainHTTP: plainHTTP}
	return r, nil
}

// parseEndpoint accepts "http(s)://host[:port]" and nothing more: a mirror
// is a whole registry, so paths, users and queries are refused rather than
// silently dropped.
func parseEndpoint(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("endpoint %q: want an http:// or https:// URL", s)
	}
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("endpoint %q: want scheme://host[:port] only", s)
	}
	return u, nil
}

// guardedTransport sits under go-containerregistry. It refuses plain HTTP
// to any host the pod did not name insecure (go-containerregistry itself
// falls back to HTTP for loopback and RFC 1918 addresses, and follows
// redirects), and caps manifest bodies at 4 MiB (go-containerregistry's own
// cap is 100 MiB, too much for guest memory).
type guardedTransport struct {
	base      http.RoundTripper
	plainHTTP map[string]bool
}

func (t *guardedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" && !t.plainHTTP[req.URL.Host] {
		return nil, fmt.Errorf("refusing %s://%s: plain HTTP is allowed only to registries listed as insecure", req.URL.Scheme, req.URL.Host)
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil || !strings.Contains(req.URL.Path, manifestPathSegment) || req.Method != http.MethodGet {
		return resp, err
	}
	if resp.ContentLength > maxManifestBytes {
		resp.Body.Close()
		return nil, fmt.Errorf("manifest %s is %d bytes, limit is %d", req.URL.Path, resp.ContentLength, maxManifestBytes)
	}
	resp.Body = &limitedBody{r: io.LimitReader(resp.Body, maxManifestBytes+1), c: resp.Body, left: maxManifestBytes}
	return resp, nil
}

// limitedBody fails a read past the limit instead of truncating, so a
// too-large manifest is an error rather than a digest mismatch.
type limitedBody struct {
	r    io.Reader
	c    io.Closer
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("manifest exceeds %d bytes", maxManifestBytes)
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.c.Close() }

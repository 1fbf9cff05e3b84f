package cdh

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// MaxRequestURI bounds the request line's target: a resource path is at
// most three 128-character segments, so 1 KiB is ample; anything longer is
// refused before it is parsed.
const MaxRequestURI = 1024

// Endpoint is what a request asks for.
type Endpoint int

const (
	// EndpointResource is GET /cdh/resource/<repository>/<type>/<tag>.
	EndpointResource Endpoint = iota + 1
	// EndpointToken is GET /aa/token?token_type=kbs.
	EndpointToken
)

// Request is a parsed, valid request.
type Request struct {
	Endpoint Endpoint
	// Resource is the KBS resource of an EndpointResource request.
	Resource kbstypes.ResourcePath
}

// Feature is the part of the API a request belongs to, as Kata's agent
// option guest_components_rest_api names them.
func (r Request) Feature() Feature {
	if r.Endpoint == EndpointToken {
		return FeatureAttestation
	}
	return FeatureResource
}

// RequestError is a request refused before the attestation agent sees it.
type RequestError struct {
	Status int    // the HTTP status to answer with
	Reason string // says what was wrong; never echoes more than a bounded part of the request
}

func (e *RequestError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Reason) }

func refuse(status int, format string, args ...any) *RequestError {
	return &RequestError{Status: status, Reason: fmt.Sprintf(format, args...)}
}

// ParseRequest checks a request's method and raw target (the request line's
// request-target, as the container sent it: not unescaped, not cleaned).
// Only the exact forms of CoCo's API are accepted: no percent-escapes, no
// dot segments, no empty segments, no query on resource paths, and the
// token's only query is token_type=kbs.
func ParseRequest(method, target string) (Request, error) {
	if len(target) > MaxRequestURI {
		return Request{}, refuse(http.StatusRequestURITooLong, "request target is %d bytes, limit is %d", len(target), MaxRequestURI)
	}
	if method != http.MethodGet {
		return Request{}, refuse(http.StatusMethodNotAllowed, "method %s: this API answers GET only", quoted(method))
	}
	path, query, hasQuery := strings.Cut(target, "?")
	if strings.ContainsAny(path, "%#\\") {
		return Request{}, refuse(http.StatusBadRequest, "path %s: percent-escapes, fragments and backslashes are not accepted", quoted(path))
	}
	if rest, ok := strings.CutPrefix(path, "/cdh/resource/"); ok {
		if hasQuery {
			return Request{}, refuse(http.StatusBadRequest, "a resource path takes no query")
		}
		p, err := kbstypes.ParseResourcePath(rest)
		if err != nil || strings.HasPrefix(rest, "/") {
			return Request{}, refuse(http.StatusBadRequest, "resource path %s: want /cdh/resource/<repository>/<type>/<tag>, each 1-%d characters of A-Z a-z 0-9 . _ -", quoted(rest), kbstypes.MaxPathSegment)
		}
		return Request{Endpoint: EndpointResource, Resource: p}, nil
	}
	if path == "/aa/token" {
		if query != "token_type=kbs" {
			return Request{}, refuse(http.StatusBadRequest, "token query %s: want token_type=kbs (the only token this guest has)", quoted(query))
		}
		return Request{Endpoint: EndpointToken}, nil
	}
	return Request{}, refuse(http.StatusNotFound, "no endpoint %s: this API serves /cdh/resource/<repository>/<type>/<tag> and /aa/token?token_type=kbs", quoted(path))
}

// quoted is s quoted with Go escapes, cut to 64 bytes: enough to recognise
// a mistake, never a way to reflect a container's bytes at length.
func quoted(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

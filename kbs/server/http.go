package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/store"
)

// Check names used in problem bodies besides those of the verifier, token
// and adminauth packages.
const (
	checkBody          = "body"
	checkBodyTooLarge  = "body-too-large"
	checkContentType   = "content-type"
	checkVersion       = "version"
	checkSession       = "session"
	checkSessionExp    = "session-expired"
	checkNotAttested   = "not-attested"
	checkNonce         = "nonce"
	checkNonceUsed     = "nonce-used"
	checkTeePubKey     = "tee-pubkey"
	checkInitData      = "init-data"
	checkResourcePath  = "resource-path"
	checkResourcePol   = "resource-policy"
	checkUnknownRes    = "unknown-resource"
	checkAttestPolicy  = "attestation-policy"
	checkAdminDisabled = "admin-disabled"
	checkAdminRole     = "admin-role"
	checkRoute         = "route"
	checkBusy          = "busy"
	checkInternal      = "internal"
	checkBundle        = "reference-bundle"
	checkBundleSigner  = "reference-bundle-signer"
	checkStorage       = "storage"
	checkRateLimit     = "rate-limit"
)

// apiError is an error that knows its HTTP answer.
type apiError struct {
	status int
	check  string
	detail string
}

func (e *apiError) Error() string { return e.detail }

func fail(status int, check, format string, args ...any) *apiError {
	return &apiError{status: status, check: check, detail: fmt.Sprintf(format, args...)}
}

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keySessionID
	keyAdminIdentity // adminauth.Identity of an authenticated admin request
)

func (s *Server) logger(ctx context.Context) *slog.Logger {
	l := s.log
	if id, ok := ctx.Value(keyRequestID).(string); ok {
		l = l.With("request_id", id)
	}
	return l
}

// writeProblem writes an RFC 7807 body.
func (s *Server) writeProblem(w http.ResponseWriter, r *http.Request, e *apiError) {
	if e.status >= 500 {
		s.logger(r.Context()).Error("request failed", "status", e.status, "check", e.check, "detail", e.detail)
	} else {
		s.logger(r.Context()).Info("request refused", "status", e.status, "check", e.check, "detail", e.detail)
	}
	body, _ := json.Marshal(kbstypes.Problem{
		Type:   "about:blank",
		Title:  http.StatusText(e.status),
		Status: e.status,
		Detail: e.detail,
		Check:  e.check,
	})
	w.Header().Set("Content-Type", kbstypes.ProblemContentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.status)
	w.Write(body)
}

// writeErr answers with err, which is an *apiError or becomes a 500.
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, store.ErrUnavailable):
		// Nothing was acknowledged; another replica, or this one
		// shortly, can serve the retry.
		w.Header().Set("Retry-After", "1")
		ae = fail(http.StatusServiceUnavailable, checkStorage, "%v; retry", err)
	default:
		ae = fail(http.StatusInternalServerError, checkInternal, "internal error: %v", err)
	}
	s.writeProblem(w, r, ae)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

// handlerFunc is a handler that returns its error instead of writing it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) wrap(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeErr(w, r, err)
		}
	})
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	// Protocol.
	mux.Handle("POST /kbs/v0/auth", s.rateLimited(newLimiter(s.cfg.AuthRateLimit), s.wrap(s.handleAuth)))
	mux.Handle("POST /kbs/v0/attest", s.rateLimited(newLimiter(s.cfg.AttestRateLimit), s.wrap(s.handleAttest)))
	mux.Handle("GET "+adminapi.PathResource+"{path...}", s.wrap(s.handleGetResource))
	// Admin.
	mux.Handle("POST "+adminapi.PathResource+"{path...}", s.adminOnly(adminapi.RoleAdmin, s.handlePutResource))
	mux.Handle("DELETE "+adminapi.PathResource+"{path...}", s.adminOnly(adminapi.RoleAdmin, s.handleDeleteResource))
	mux.Handle("GET "+adminapi.PathAdminResource+"{path...}", s.adminOnly(adminapi.RoleAdmin, s.handleAdminGetResource))
	mux.Handle("GET "+adminapi.PathResources, s.adminOnly(adminapi.RoleAuditor, s.handleListResources))
	mux.Handle("POST "+adminapi.PathResourcePolicy, s.adminOnly(adminapi.RoleAdmin, s.handleSetResourcePolicy))
	mux.Handle("GET "+adminapi.PathResourcePolicy, s.adminOnly(adminapi.RoleAuditor, s.handleGetResourcePolicy))
	mux.Handle("POST "+adminapi.PathAttestationPolicy, s.adminOnly(adminapi.RoleAdmin, s.handleSetAttestationPolicy))
	mux.Handle("GET "+adminapi.PathAttestationPolicy, s.adminOnly(adminapi.RoleAuditor, s.handleGetAttestationPolicy))
	mux.Handle("POST "+adminapi.PathReferenceValues, s.adminOnly(adminapi.RoleAdmin, s.handleSetReferenceValue))
	mux.Handle("GET "+adminapi.PathReferenceValues, s.adminOnly(adminapi.RoleAuditor, s.handleGetReferenceValues))
	mux.Handle("DELETE "+adminapi.PathReferenceValues+"/{name}", s.adminOnly(adminapi.RoleAdmin, s.handleDeleteReferenceValue))
	mux.Handle("POST "+adminapi.PathReferenceImport, s.adminOnly(adminapi.RoleAdmin, s.handleImportReferenceValues))
	mux.Handle("POST "+adminapi.PathTrusteeReferenceValue, s.adminOnly(adminapi.RoleAdmin, s.handleSetTrusteeReferenceValue))
	mux.Handle("GET "+adminapi.PathTrusteeReferenceValue+"/{name}", s.adminOnly(adminapi.RoleAuditor, s.handleGetTrusteeReferenceValue))
	mux.Handle("GET "+adminapi.PathAudit, s.adminOnly(adminapi.RoleAuditor, s.handleAudit))
	// Operations.
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := randomID()
		ctx := context.WithValue(r.Context(), keyRequestID, id)
		r = r.WithContext(ctx)
		w.Header().Set("X-Request-Id", id)
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		r.Body = http.MaxBytesReader(rec, r.Body, s.cfg.MaxBodyBytes)

		h, pattern := mux.Handler(r)
		switch {
		case badResourcePath(r):
			pattern = "invalid-path"
			s.writeProblem(rec, r, fail(http.StatusBadRequest, checkResourcePath,
				"resource path %q is invalid: segments are [A-Za-z0-9._-], never \".\" or \"..\", and never percent-encoded", r.URL.EscapedPath()))
		case pattern == "":
			// The mux would answer 404 or 405 in plain text; keep its status
			// and Allow header but answer with a problem body.
			probe := &headerProbe{header: http.Header{}}
			h.ServeHTTP(probe, r)
			if allow := probe.header.Get("Allow"); allow != "" {
				rec.Header().Set("Allow", allow)
			}
			pattern = "unmatched"
			s.writeProblem(rec, r, fail(probe.status, checkRoute, "no route %s %s", r.Method, r.URL.Path))
		default:
			// Only the mux's own ServeHTTP fills in r.PathValue.
			mux.ServeHTTP(rec, r)
		}
		elapsed := time.Since(start)
		s.metrics.requests.WithLabelValues(pattern, strconv.Itoa(rec.status)).Observe(elapsed.Seconds())
		s.logger(ctx).Info("request", "method", r.Method, "route", pattern, "status", rec.status,
			"duration_ms", elapsed.Milliseconds(), "remote", r.RemoteAddr, "session_id", sessionFromCtx(r))
	})
}

func sessionFromCtx(r *http.Request) string {
	if c, err := r.Cookie(kbstypes.SessionCookie); err == nil {
		return c.Value
	}
	return ""
}

// badResourcePath rejects resource URLs that are not plain segments before
// the mux sees them: the mux would otherwise redirect "/../" to a cleaned
// path, and resource segments never need percent-encoding.
func badResourcePath(r *http.Request) bool {
	p := r.URL.EscapedPath()
	for _, prefix := range []string{adminapi.PathResource, adminapi.PathAdminResource} {
		if rest, ok := strings.CutPrefix(p, prefix); ok {
			if strings.Contains(rest, "%") {
				return true
			}
			for _, seg := range strings.Split(rest, "/") {
				if seg == "." || seg == ".." || seg == "" {
					return true
				}
			}
		}
	}
	return false
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// headerProbe captures what the mux's fallback handler would answer.
type headerProbe struct {
	header http.Header
	status int
}

func (p *headerProbe) Header() http.Header         { return p.header }
func (p *headerProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *headerProbe) WriteHeader(code int)        { p.status = code }

func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// requireJSON refuses a body that does not declare application/json.
func requireJSON(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fail(http.StatusUnsupportedMediaType, checkContentType, "Content-Type %q not supported: send application/json", ct)
	}
	return nil
}

// decodeJSON reads a JSON body into v. Unknown fields are tolerated (Trustee
// clients may send extras); callers validate the required ones.
func decodeJSON(r *http.Request, v any) error {
	if err := requireJSON(r); err != nil {
		return err
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return bodyError(err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return fail(http.StatusBadRequest, checkBody, "request body is not valid JSON at byte %d: %v", se.Offset, err)
		case errors.As(err, &te):
			return fail(http.StatusBadRequest, checkBody, "request body field %q: want %s, got JSON %s", te.Field, te.Type, te.Value)
		default:
			return fail(http.StatusBadRequest, checkBody, "request body: %v", err)
		}
	}
	return nil
}

// bodyError maps a body read error; an oversized body is 413.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fail(http.StatusRequestEntityTooLarge, checkBodyTooLarge, "request body larger than %d bytes", mbe.Limit)
	}
	return fail(http.StatusBadRequest, checkBody, "read request body: %v", err)
}

// handleHealthz answers 200 "ok" while the storage backend answers, and
// 503 naming the failure while it does not (a load balancer then sends
// guests to another replica). It recovers by itself with the backend.
func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.store.Ping(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		if !errors.Is(err, store.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		fmt.Fprintf(w, "%v\n", err)
		return
	}
	io.WriteString(w, "ok\n")
}

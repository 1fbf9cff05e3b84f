// Package cdh serves, inside a confidential pod's guest, the REST API that
// Confidential Containers' api-server-rest gives a pod's containers (the
// Confidential Data Hub's resource API and the attestation agent's token)
// on http://127.0.0.1:8006:
//
//	GET /cdh/resource/<repository>/<type>/<tag>   the KBS resource's bytes
//	GET /aa/token?token_type=kbs                  {"token": "<the KBS's attestation token>"}
//
// Both go through the sandbox's attestation agent (cloak-aa's local API), so
// a resource is released to this guest's attested session with the same
// TEE key and KBS resource policy as image keys. The listener is bound to
// the guest's loopback in the network namespace the pod's containers share
// (the VM's own: the shim drops the host's network namespace path), and
// drops any connection whose peer is not a loopback address. Errors are an
// HTTP status with a one-line reason: 403 the KBS (or the pod's agent
// policy) refused, 404 the KBS has no such resource, 503 the KBS did not
// answer within the attestation agent's retry budget; anything else is a
// 502 without detail.
package cdh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/agentpolicy"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

// DefaultAddr is where CoCo's api-server-rest listens, and so where
// workloads written for CoCo look.
const DefaultAddr = "127.0.0.1:8006"

const (
	// MaxResource bounds a resource's bytes in an answer.
	MaxResource = 1 << 20
	// maxInFlight bounds concurrent requests: each may hold an attestation
	// agent call for its whole retry budget.
	maxInFlight = 16
	// requestTimeout bounds one request's call to the attestation agent,
	// whose own budget (30 s) ends first: it answers Unavailable then.
	requestTimeout = 45 * time.Second
	// maxReason bounds the KBS's refusal quoted in an answer.
	maxReason = 512
)

// Agent is the sandbox's attestation agent.
type Agent interface {
	// GetResource fetches "kbs:///repository/type/tag" from the KBS.
	GetResource(ctx context.Context, uri string) ([]byte, error)
	// Token returns a valid attestation token from the KBS.
	Token(ctx context.Context) (string, error)
}

// Feature names a part of the API: the agent policy's
// guest_components_rest_api (agentpolicy.RestAPI), as Kata's agent option.
type Feature string

const (
	FeatureNone        Feature = agentpolicy.RestAPINone
	FeatureResource    Feature = agentpolicy.RestAPIResource    // /cdh/resource (CoCo's default)
	FeatureAttestation Feature = agentpolicy.RestAPIAttestation // /aa/token
	FeatureAll         Feature = agentpolicy.RestAPIAll
)

// allows reports whether f enables the API part want.
func (f Feature) allows(want Feature) bool { return f == FeatureAll || f == want }

// Handler answers the API's requests with a, for the parts features enables.
func Handler(a Agent, features Feature, log *slog.Logger) http.Handler {
	return &handler{agent: a, features: features, log: logOrDiscard(log), slots: make(chan struct{}, maxInFlight)}
}

func logOrDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

type handler struct {
	agent    Agent
	features Feature
	log      *slog.Logger
	slots    chan struct{}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	code, what := h.serve(w, r)
	// The path is the workload's business: the log (which the host reads on
	// the serial console) gets what was asked for and the answer's status.
	h.log.Info("rest api request", "endpoint", what, "status", code, "took", time.Since(start).Round(time.Millisecond))
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request) (int, string) {
	req, err := ParseRequest(r.Method, r.RequestURI)
	if err != nil {
		var re *RequestError
		errors.As(err, &re)
		return fail(w, re.Status, re.Reason), "invalid"
	}
	what := string(req.Feature())
	if !h.features.allows(req.Feature()) {
		return fail(w, http.StatusForbidden, fmt.Sprintf("the pod's agent policy does not enable the %s API (guest_components_rest_api = %q)", req.Feature(), h.features)), what
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		return fail(w, http.StatusTooManyRequests, fmt.Sprintf("%d requests are in flight already; retry later", maxInFlight)), what
	}
	// Not cancelled when the client closes its side: `printf ... | nc`
	// half-closes after the request and still reads the answer, and Go's
	// server reports that as the client going away. The slots and the
	// timeout bound the work instead.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), requestTimeout)
	defer cancel()
	switch req.Endpoint {
	case EndpointResource:
		v, err := h.agent.GetResource(ctx, req.Resource.URI())
		if err != nil {
			return h.failAgent(w, err, "resource "+req.Resource.String()), what
		}
		if len(v) > MaxResource {
			return fail(w, http.StatusBadGateway, fmt.Sprintf("resource %s is %d bytes, more than the %d this API hands out", req.Resource, len(v), MaxResource)), what
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(v)
	case EndpointToken:
		tok, err := h.agent.Token(ctx)
		if err != nil {
			return h.failAgent(w, err, "token"), what
		}
		// CoCo's answer also carries the TEE key pair; the key never leaves
		// the attestation agent here.
		body, _ := json.Marshal(struct {
			Token string `json:"token"`
		}{tok})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(body)
	}
	return http.StatusOK, what
}

// failAgent answers an attestation agent error with its status and the
// KBS's reason for a refusal; an unreachable KBS and other failures get a
// fixed text, since their messages name addresses and internal errors; an
// unexpected failure's error goes to the guest's log.
func (h *handler) failAgent(w http.ResponseWriter, err error, what string) int {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.PermissionDenied, codes.Unauthenticated:
		return fail(w, http.StatusForbidden, reason(st.Message()))
	case codes.NotFound:
		return fail(w, http.StatusNotFound, reason(st.Message()))
	case codes.Unavailable, codes.DeadlineExceeded:
		return fail(w, http.StatusServiceUnavailable, "the KBS did not answer the guest within the attestation agent's retry budget ("+what+"); retry later")
	case codes.InvalidArgument:
		return fail(w, http.StatusBadRequest, reason(st.Message()))
	}
	h.log.Warn("rest api: the attestation agent failed", "code", st.Code().String(), "err", reason(st.Message()))
	return fail(w, http.StatusBadGateway, "the attestation agent failed ("+what+"); the guest's log has the error")
}

// reason is a KBS refusal made safe to quote: printable, one line, bounded.
func reason(s string) string {
	s = strings.Join(strings.Fields(kbstypes.SafeText(s)), " ")
	if len(s) > maxReason {
		s = strings.ToValidUTF8(s[:maxReason], "") + "..."
	}
	return s
}

func fail(w http.ResponseWriter, code int, msg string) int {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
	return code
}

// Server is the API listening in the guest.
type Server struct {
	srv  *http.Server
	lis  net.Listener
	done chan error
}

// Start listens on addr, which must be a loopback IP and port, and serves
// Handler(a, features, log) until Close.
func Start(addr string, a Agent, features Feature, log *slog.Logger) (*Server, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("rest api address %s: want a loopback IP and port such as %s: the API must not be reachable from outside the guest", quoted(addr), DefaultAddr)
	}
	lis, err := net.Listen("tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("rest api: listen on %s: %w", ap, err)
	}
	s := &Server{
		lis: loopbackOnly{lis},
		srv: &http.Server{
			Handler:           Handler(a, features, log),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      requestTimeout + 10*time.Second,
			IdleTimeout:       time.Minute,
			MaxHeaderBytes:    8 << 10,
			ErrorLog:          slog.NewLogLogger(logOrDiscard(log).Handler(), slog.LevelWarn),
		},
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(s.lis) }()
	return s, nil
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Close stops the server: requests in flight get 5 s to finish.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// loopbackOnly drops connections from non-loopback peers. The socket is
// bound to a loopback address, which the kernel routes only from this
// network namespace unless route_localnet is set (hostinput refuses that
// sysctl from the host); this is the second wall.
type loopbackOnly struct{ net.Listener }

func (l loopbackOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil && ap.Addr().Unmap().IsLoopback() {
			return c, nil
		}
		c.Close()
	}
}

package rcar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// KBSError is a refusal from the KBS, read from its RFC 7807 body.
type KBSError struct {
	// Op names what was asked, e.g. "attestation" or "resource default/key/1".
	Op     string
	Status int
	// Check is the KBS's machine-readable name of the failing check.
	Check string
	// Detail is the KBS's explanation, quoted verbatim in Error.
	Detail string
	// RetryAfter is the KBS's Retry-After (429 and 503 answers): the
	// client waits at least this long (at most maxRetryAfter) before
	// retrying.
	RetryAfter time.Duration
}

func (e *KBSError) Error() string {
	verb := "kbs rejected"
	switch e.Status {
	case http.StatusForbidden:
		verb = "kbs denied"
	case http.StatusNotFound:
		verb = "kbs has no"
	}
	if e.Status >= 500 {
		verb = "kbs failed"
	}
	code := fmt.Sprint(e.Status)
	if e.Check != "" {
		code += " " + e.Check
	}
	return fmt.Sprintf("%s %s (%s): %s", verb, e.Op, code, e.Detail)
}

// GRPCStatus lets the agent's gRPC services pass the KBS's reason to their
// callers with a matching code (status.FromError finds it through wrapping).
func (e *KBSError) GRPCStatus() *status.Status {
	code := codes.Unavailable
	switch {
	case e.Status == http.StatusUnauthorized:
		code = codes.Unauthenticated
	case e.Status == http.StatusForbidden:
		code = codes.PermissionDenied
	case e.Status == http.StatusNotFound:
		code = codes.NotFound
	case e.Status == http.StatusRequestEntityTooLarge, e.Status == http.StatusTooManyRequests:
		code = codes.ResourceExhausted
	case e.Status >= 400 && e.Status < 500:
		code = codes.InvalidArgument
	}
	return status.New(code, e.Error())
}

// maxRetryAfter caps a KBS's Retry-After, so that a wrong header cannot
// park a guest for hours; the call's budget bounds the total anyway.
const maxRetryAfter = 30 * time.Second

// parseRetryAfter reads a Retry-After header: delay-seconds or an
// HTTP-date (RFC 9110 10.2.3). Anything else, or a past date, is 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 32); err == nil {
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = at.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// maxDetail bounds how much of an error body is quoted in an error.
const maxDetail = 200

// maxProblemDetail bounds the detail of an RFC 7807 body: enough for the
// KBS's claim-by-claim reasons, not a way to flood logs.
const maxProblemDetail = 4096

// printable is kbstypes.SafeText, trimmed, at most max bytes.
func printable(s string, max int) string {
	s = strings.TrimSpace(kbstypes.SafeText(s))
	if len(s) > max {
		s = strings.ToValidUTF8(s[:max], "") + "..."
	}
	return s
}

// kbsError builds the error for a non-2xx answer. A body that is not a
// Problem (e.g. from a proxy) is quoted, shortened, as the detail.
func kbsError(op string, statusCode int, body []byte) *KBSError {
	e := &KBSError{Op: op, Status: statusCode}
	var p kbstypes.Problem
	if json.Unmarshal(body, &p) == nil && (p.Detail != "" || p.Title != "") {
		e.Check, e.Detail = printable(p.Check, 64), printable(p.Detail, maxProblemDetail)
		if e.Detail == "" {
			e.Detail = printable(p.Title, maxDetail)
		}
		return e
	}
	text := printable(string(body), maxDetail)
	if text == "" {
		text = http.StatusText(statusCode)
	}
	e.Detail = text
	return e
}

// ErrorDomain and ReasonUnreachable name the google.rpc.ErrorInfo detail
// that an *UnreachableError's gRPC status carries, so that callers across
// a gRPC hop (ocicrypt's keyprovider client) can still tell an unreachable
// KBS from a refusal without reading the message.
const (
	ErrorDomain       = "kbs-client.cloak.dev"
	ReasonUnreachable = "KBS_UNREACHABLE"
)

// ErrUnreachable matches (errors.Is) every *UnreachableError: the KBS could
// not be reached, did not answer in time or kept failing (5xx), as opposed
// to a KBS that answered with a refusal (*KBSError with a 4xx status).
var ErrUnreachable = errors.New("KBS unreachable")

// UnreachableError is returned once the client's retries or time budget
// ran out while the KBS gave no usable answer.
type UnreachableError struct {
	// URL is the KBS base URL the client was configured with.
	URL string
	// Attempts counts the tries of the step that failed (one attestation
	// try is auth then attest).
	Attempts int
	// Elapsed is the time since the call (e.g. GetResource) began.
	Elapsed time.Duration
	// Last is the last attempt's error.
	Last error
}

func (e *UnreachableError) Error() string {
	tries := "attempts"
	if e.Attempts == 1 {
		tries = "attempt"
	}
	var te *transportError
	if errors.As(e.Last, &te) {
		return fmt.Sprintf("KBS %s did not answer: %d %s over %.1fs, last error: %s: %v; "+
			"check that the KBS is running and reachable from the guest at the URL in the pod's initdata",
			e.URL, e.Attempts, tries, e.Elapsed.Seconds(), te.op, te.err)
	}
	return fmt.Sprintf("KBS %s failed: %d %s over %.1fs, last error: %v; check the KBS's log",
		e.URL, e.Attempts, tries, e.Elapsed.Seconds(), e.Last)
}

func (e *UnreachableError) Unwrap() error { return e.Last }

func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// GRPCStatus makes an unreachable KBS Unavailable for the agent's gRPC
// callers, whatever the last attempt's error was, with ReasonUnreachable.
func (e *UnreachableError) GRPCStatus() *status.Status {
	return unreachableStatus(e.Error())
}

func unreachableStatus(msg string) *status.Status {
	st := status.New(codes.Unavailable, msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: ReasonUnreachable, Domain: ErrorDomain}); err == nil {
		st = withInfo
	}
	return st
}

// StatusError converts an error from a Client method into a gRPC status
// error for the agent's gRPC services: the KBS's refusal keeps its code and
// reason, a cancelled call stays cancelled, and anything else (KBS not
// reachable, unusable answer) is Unavailable.
func StatusError(err error) error {
	// Checked first: its last error may be a timeout, and an unreachable
	// KBS is Unavailable, not the caller's deadline.
	if errors.Is(err, ErrUnreachable) {
		return unreachableStatus(err.Error()).Err()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}

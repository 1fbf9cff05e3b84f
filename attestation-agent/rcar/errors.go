package rcar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/kbstypes"
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
	case e.Status == http.StatusRequestEntityTooLarge:
		code = codes.ResourceExhausted
	case e.Status >= 400 && e.Status < 500:
		code = codes.InvalidArgument
	}
	return status.New(code, e.Error())
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

// StatusError converts an error from a Client method into a gRPC status
// error for the agent's gRPC services: the KBS's refusal keeps its code and
// reason, a cancelled call stays cancelled, and anything else (KBS not
// reachable, unusable answer) is Unavailable.
func StatusError(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}

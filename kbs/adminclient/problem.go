package adminclient

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Error is a non-2xx answer from the KBS. Problem holds the RFC 7807 body;
// when the KBS (or a proxy in front of it) sent something else, Problem is
// synthesized from the status line and the start of the body.
type Error struct {
	Method  string
	Path    string
	Problem kbstypes.Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "KBS answered %s %s with %d %s", e.Method, e.Path, e.Problem.Status, http.StatusText(e.Problem.Status))
	if e.Problem.Check != "" {
		fmt.Fprintf(&b, " (check %q)", e.Problem.Check)
	}
	if e.Problem.Detail != "" {
		b.WriteString(": " + e.Problem.Detail)
	} else if e.Problem.Title != "" {
		b.WriteString(": " + e.Problem.Title)
	}
	return b.String()
}

// parseError turns a non-2xx response into an *Error.
func parseError(method, path string, resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Method: method, Path: path}
	if err := json.Unmarshal(data, &e.Problem); err != nil || (e.Problem.Detail == "" && e.Problem.Title == "") {
		e.Problem = kbstypes.Problem{Title: http.StatusText(resp.StatusCode), Detail: snippet(data)}
	}
	// The status line is authoritative; a body may omit or misstate it.
	e.Problem.Status = resp.StatusCode
	return e
}

// snippet returns the first line of a non-problem body, shortened, so that
// an HTML error page from a proxy does not flood the terminal.
func snippet(data []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	const max = 200
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

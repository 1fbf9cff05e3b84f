package rcar

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// KBS error bodies come from the network: whatever they hold, the error
// message stays bounded, valid UTF-8 and free of control characters.
func FuzzKBSError(f *testing.F) {
	f.Add(403, []byte(`{"type":"about:blank","title":"Forbidden","status":403,"detail":"denied","check":"resource-policy"}`))
	f.Add(502, []byte("<html>bad gateway</html>"))
	f.Add(401, []byte("{\"detail\":\"\x1b[2Jgotcha\",\"check\":\"\x07\"}"))
	f.Add(500, []byte{0xff, 0xfe, '\n'})
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		msg := kbsError("get resource a/b/c", status, body).Error()
		if !utf8.ValidString(msg) {
			t.Fatalf("invalid UTF-8: %q", msg)
		}
		if strings.IndexFunc(msg, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			t.Fatalf("control character in %q", msg)
		}
		if len(msg) > maxProblemDetail+512 {
			t.Fatalf("message of %d bytes", len(msg))
		}
	})
}

// Token expiry is read from an unverified token the KBS sent.
func FuzzTokenExpiry(f *testing.F) {
	f.Add("eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2ln")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		_, _ = tokenExpiry(token)
	})
}

// Retry-After comes from the network: whatever it holds, the wait is
// between 0 and maxRetryAfter.
func FuzzParseRetryAfter(f *testing.F) {
	f.Add("1")
	f.Add("Wed, 21 Oct 2015 07:28:00 GMT")
	f.Add("18446744073709551616")
	f.Add("-5")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		if d := parseRetryAfter(v, now); d < 0 || d > maxRetryAfter {
			t.Fatalf("parseRetryAfter(%q) = %v, outside [0, %v]", v, d, maxRetryAfter)
		}
	})
}

package testutil

import (
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// OneJSONObject decodes s as exactly one JSON object, failing t when it is
// not one or when anything but white space follows it.
func OneJSONObject(t testing.TB, s string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		t.Fatalf("want one JSON object, got %q: %v", s, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("want one JSON object, more follows it in %q", s)
	}
	return obj
}

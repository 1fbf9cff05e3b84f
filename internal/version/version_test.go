package version

import (
	"reflect"
	"strings"
	"testing"
)

type marker struct{}

// TestLDFlags: the -X flags name this package's real import path (a
// wrong one is silently ignored by the linker) and skip empty values.
func TestLDFlags(t *testing.T) {
	if got := reflect.TypeOf(marker{}).PkgPath(); got != pkg {
		t.Fatalf("pkg = %q, but this package is %q", pkg, got)
	}
	tests := []struct{ version, commit, want string }{
		{"v1.2.0-3-gabc", "abc123", "-X " + pkg + ".Version=v1.2.0-3-gabc -X " + pkg + ".Commit=abc123"},
		{"", "abc123", "-X " + pkg + ".Commit=abc123"},
		{"", "", ""},
	}
	for _, tt := range tests {
		if got := LDFlags(tt.version, tt.commit); got != tt.want {
			t.Errorf("LDFlags(%q, %q) = %q, want %q", tt.version, tt.commit, got, tt.want)
		}
	}
	if s := String(); !strings.HasPrefix(s, "dev (commit unknown, go") {
		t.Errorf("String() = %q unstamped", s)
	}
}

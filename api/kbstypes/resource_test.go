package kbstypes

import (
	"strings"
	"testing"
)

func TestParseResourcePath(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "default/key/1", want: "default/key/1"},
		{in: "/my-repo/image_key/v1.2", want: "my-repo/image_key/v1.2"},
		{in: "a/b", wantErr: "three segments"},
		{in: "a/b/c/d", wantErr: "three segments"},
		{in: "../b/c", wantErr: `".." is not allowed`},
		{in: "a/./c", wantErr: `"." is not allowed`},
		{in: "a//c", wantErr: "empty segment"},
		{in: "a/b/%2e%2e", wantErr: "not allowed"},
		{in: "a/b/c\x00", wantErr: "not allowed"},
		{in: "a/b/" + strings.Repeat("x", MaxPathSegment+1), wantErr: "longer than"},
	}
	for _, tt := range tests {
		got, err := ParseResourcePath(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseResourcePath(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseResourcePath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseResourceURI(t *testing.T) {
	host, p, err := ParseResourceURI("kbs:///default/key/1")
	if err != nil || host != "" || p.URI() != "kbs:///default/key/1" {
		t.Errorf("got %q %v %v", host, p, err)
	}
	host, p, err = ParseResourceURI("kbs://kbs.example:8080/r/t/x")
	if err != nil || host != "kbs.example:8080" || p.String() != "r/t/x" {
		t.Errorf("got %q %v %v", host, p, err)
	}
	for _, bad := range []string{"https:///a/b/c", "kbs://", "kbs:///a/b", "kbs:///a/../c"} {
		if _, _, err := ParseResourceURI(bad); err == nil {
			t.Errorf("ParseResourceURI(%q): want error", bad)
		}
	}
}

func FuzzParseResourcePath(f *testing.F) {
	for _, s := range []string{"default/key/1", "../../etc/passwd", "a/b/c/d", "/a/b/c", "kbs:///a/b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseResourcePath(s)
		if err != nil {
			return
		}
		// Whatever parses must round-trip and never contain traversal.
		again, err := ParseResourcePath(p.String())
		if err != nil || again != p {
			t.Fatalf("round trip of %q failed: %v %v", s, again, err)
		}
		for _, seg := range []string{p.Repository, p.Type, p.Tag} {
			if seg == ".." || seg == "." || strings.ContainsAny(seg, "/\\%\x00") {
				t.Fatalf("unsafe segment %q from %q", seg, s)
			}
		}
		if _, _, err := ParseResourceURI(p.URI()); err != nil {
			t.Fatalf("URI of %q does not parse: %v", s, err)
		}
	})
}

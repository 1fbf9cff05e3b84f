package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/internal/version"
)

// TestVersion: -v and --version print Cloak's version, wherever containerd's
// flags put them; the calls containerd makes are left to shim.Run.
func TestVersion(t *testing.T) {
	tests := []struct {
		args []string
		want bool
	}{
		{[]string{"-v"}, true},
		{[]string{"--version"}, true},
		{[]string{"-namespace", "k8s.io", "-v"}, true},
		{nil, false},
		{[]string{"-info"}, false},
		{[]string{"-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock", "-publish-binary", "/usr/bin/containerd", "-id", "abc", "start"}, false},
		{[]string{"-namespace", "k8s.io", "-id", "abc", "-bundle", "/b", "delete", "-v"}, false},
	}
	for _, tt := range tests {
		if got := versionRequested(tt.args); got != tt.want {
			t.Errorf("versionRequested(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
	var out bytes.Buffer
	printVersion(&out)
	if !strings.HasPrefix(out.String(), "containerd-shim-cloak-v2 version "+version.String()+" (containerd shim library 2.") {
		t.Errorf("version line %q", out.String())
	}
}

// Package version is the version and commit of Cloak's binaries, stamped at
// build time (the Makefile and the guest image build pass LDFlags to go
// build); an unstamped build (plain go build, go test) says "dev"/"unknown".
package version

import (
	"runtime"
	"strings"
)

// Set with -ldflags "-X"; see LDFlags.
var (
	// Version is `git describe --tags --always --dirty` of the source tree.
	Version = "dev"
	// Commit is `git rev-parse HEAD` of the source tree.
	Commit = "unknown"
)

// String is what every binary's --version prints after its name.
func String() string {
	return Version + " (commit " + Commit + ", " + runtime.Version() + ")"
}

// LDFlags are the go build -ldflags that stamp version and commit; empty
// values keep the defaults.
func LDFlags(version, commit string) string {
	var flags []string
	if version != "" {
		flags = append(flags, "-X "+pkg+".Version="+version)
	}
	if commit != "" {
		flags = append(flags, "-X "+pkg+".Commit="+commit)
	}
	return strings.Join(flags, " ")
}

const pkg = "github.com/cloak-containers/cloak/internal/version"

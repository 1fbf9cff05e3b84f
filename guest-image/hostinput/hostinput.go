// Package hostinput validates the host's agent requests within one set of
// limits and returns typed values: every field a request carries is
// host-controlled and hostile until checked here; the agent policy
// (agentpolicy, guest-image/agent/gate.go) decides beside it what a valid
// request may do.
package hostinput

import (
	"fmt"
	"regexp"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// Limits on host-controlled fields beyond agentapi.MaxMessageSize, for
// every request in one place. They are generous for real pods and small
// enough that a hostile host cannot make the agent spend much memory or
// time on one request.
const (
	// Container spec (beyond the message size), exec process, update.
	maxProcessJSON   = 1 << 20
	maxResourcesJSON = 64 << 10
	maxConsoleSize   = 10000 // rows or columns of a terminal

	// PullImage.
	maxImageRef    = 4096
	maxPlatform    = 64
	maxListEntries = 64 // insecure registries, mirrors

	// Any free-form string: registry names, network fields.
	maxShortString = 512

	// CreateSandbox.
	maxInitdata = 1 << 20
	maxFSTag    = 36
	maxHostname = 64
	// The network: one pod, a few NICs.
	maxInterfaces   = 16
	maxAddresses    = 16 // per interface
	maxRoutes       = 64
	maxDNSServers   = 3 // resolv.conf readers (glibc, musl) use 3
	maxDNSSearches  = 6
	maxSearchLength = 253
	minMTU, maxMTU  = 68, 65535
	maxSysctls      = 64
	maxSysctlValue  = 256

	// CreateContainer's copied files and mount sources. The host copies at
	// most 1024 entries and 3 MiB of data (shim/mounts); these leave room.
	maxContainerFiles = 1024
	maxFilesBytes     = 3<<20 + 512<<10
	maxFilePath       = 1024
	maxMountSources   = 256

	// maxQuoted bounds a hostile value quoted in an error (Truncate).
	maxQuoted = 80
)

// Err builds the agent's gRPC error: a status code for generic clients, and
// an ErrorInfo with one of agentapi's reasons for the shim, which branches
// on the reason and shows the message to users.
func Err(code codes.Code, reason, format string, args ...any) error {
	st := status.New(code, fmt.Sprintf(format, args...))
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: agentapi.ErrorDomain}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// Invalid is the common case of a malformed or oversized host field.
func Invalid(format string, args ...any) error {
	return Err(codes.InvalidArgument, agentapi.ReasonInvalidRequest, format, args...)
}

// Denied refuses a well-formed field the untrusted host must not decide
// (hooks, host paths, devices, links out of their directory).
func Denied(format string, args ...any) error {
	return Err(codes.PermissionDenied, agentapi.ReasonPolicy, format, args...)
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// ID validates a container, exec, sandbox, pod or volume id: ids become
// file names under the agent's state dir and runc container names.
func ID(kind, id string) error {
	if !idPattern.MatchString(id) {
		return Invalid("%s id %q: want 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit", kind, Truncate(id))
	}
	return nil
}

// Truncate keeps hostile values from flooding error messages and logs.
func Truncate(s string) string {
	if len(s) > maxQuoted {
		return s[:maxQuoted] + "..."
	}
	return s
}

package agentapi

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo detail the agent
// attaches to its gRPC errors; Reason* are its reasons. Callers branch on
// the reason, users read the message.
const ErrorDomain = "agent.cloak.dev"

const (
	ReasonInvalidRequest   = "INVALID_REQUEST"   // a malformed or oversized field
	ReasonNotFound         = "NOT_FOUND"         // unknown container, process or image
	ReasonAlreadyExists    = "ALREADY_EXISTS"    // id in use
	ReasonSandboxNotReady  = "SANDBOX_NOT_READY" // CreateSandbox has not run
	ReasonImagePull        = "IMAGE_PULL_FAILED" // registry, manifest or digest problem
	ReasonKeyUnavailable   = "KEY_UNAVAILABLE"   // the KBS refused or could not release a layer key
	ReasonKBSUnreachable   = "KBS_UNREACHABLE"   // the KBS did not answer the guest in time (stopped, frozen or not reachable)
	ReasonDecrypt          = "DECRYPT_FAILED"    // a layer did not decrypt with the released key
	ReasonRuntime          = "RUNTIME_FAILED"    // runc failed
	ReasonPolicy           = "POLICY_DENIED"     // the agent policy refused the call
	ReasonAttestationAgent = "ATTESTATION_AGENT" // cloak-aa could not be started or reached
	ReasonInitdataMismatch = "INITDATA_MISMATCH" // the TEE report does not bind the initdata the host sent
	ReasonSealedSecret     = "SEALED_SECRET"     // a sealed secret in the container's environment could not be unsealed
)

// MaxMessageSize bounds any single message either side sends (OCI specs,
// stdio chunks). Larger stdio is sent in chunks.
const MaxMessageSize = 4 << 20

// IOChunkSize is the largest stdout/stderr chunk the agent sends.
const IOChunkSize = 32 << 10

// AgentPortName is the virtio-serial port name of the agent channel; the
// guest sees it in /sys/class/virtio-ports/*/name.
const AgentPortName = "cloak.agent"

// VsockPort is the agent's vsock port on hosts with vhost-vsock.
const VsockPort = 1024

// A virtio-serial port is one byte stream with no connection boundaries:
// bytes of a host connection that just closed and of the next one can reach
// the same guest read. So every host connection over virtio-serial starts
// with a line "<SerialHello> <token>\n" (token: 1-64 characters of
// [0-9a-f]), and the agent answers "<SerialWelcome> <token>\n" before
// serving gRPC on it; anything before a valid hello is discarded. A host that
// gets no welcome closes and reconnects. (vsock has real connections and no
// handshake.)
const (
	SerialHello   = "CLOAK-AGENT-HELLO"
	SerialWelcome = "CLOAK-AGENT-WELCOME"
	// SerialHelloMax bounds a handshake line, newline included.
	SerialHelloMax = 128
)

// ReasonOf returns the agent's reason carried by a gRPC error ("" when the
// error has none, e.g. a transport failure).
func ReasonOf(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

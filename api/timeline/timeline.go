// Package timeline is the contract of the shim's pod start timeline: the one
// log line (message Msg, logrus key=value fields) the shim writes per
// started container, and that the timeline tool (ci/timeline: make demo,
// make bench-e2e) and operators read back from containerd's log. Times are
// host-clock RFC 3339 with nanoseconds (FormatTime); durations measured by
// the guest are whole microseconds. The shim and the reader import this
// package; it imports only the standard library.
package timeline

import "time"

// Msg is the message of the timeline line.
const Msg = "pod start timeline"

// Identifying fields.
const (
	Container = "container"
	Sandbox   = "sandbox"
	TEE       = "tee" // the handler's TEE: snp, tdx, none, emulated-snp, emulated-tdx
	Image     = "image"
	Encrypted = "encrypted" // "true" when the image had encrypted layers
)

// Host-clock times, in the order they happen.
const (
	VMRequested  = "vm_requested"  // the shim began starting the VM
	QEMUStarted  = "qemu_started"  // QEMU runs (the guest boots)
	AgentReady   = "agent_ready"   // the guest agent answered
	SandboxReady = "sandbox_ready" // the guest set up the sandbox (network, initdata)
	PullStarted  = "pull_started"
	PullDone     = "pull_done"
	Created      = "created"
	Started      = "started"
)

// Guest-measured durations in microseconds.
const (
	PolicyUS  = "policy_us" // the agent policy's decisions so far
	ResolveUS = "resolve_us"
	FetchUS   = "fetch_us"
	DecryptUS = "decrypt_us"
	UnpackUS  = "unpack_us"
)

// FormatTime is how the line writes a host time.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ParseTime reads a host time of the line.
func ParseTime(s string) (time.Time, error) { return time.Parse(time.RFC3339Nano, s) }

// Microseconds is how the line writes a guest-measured duration in ns.
func Microseconds(ns int64) int64 { return ns / int64(time.Microsecond) }

package task

import (
	"context"
	"time"

	"github.com/containerd/log"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/api/timeline"
	"github.com/cloak-containers/cloak/shim/config"
)

// The pod start timeline: when each step of a container's start ended, on
// the host's clock, with the guest's own measure of the image pull. The shim
// logs it once per container when the container starts (containerd copies
// shim logs into its own), for operators asking where a slow start went, and
// for ci/timeline (make demo, make bench-e2e), which lines it up with the
// KBS's audit of the attestation and key release. The line's contract is
// api/timeline.

// vmTimes are the steps of a VM's start.
type vmTimes struct {
	requested   time.Time // the shim began starting the VM
	qemuStarted time.Time // QEMU runs (the guest boots)
	agentReady  time.Time // the guest agent answered
	ready       time.Time // the guest set up the sandbox (network, initdata)
}

// startTimes are the steps of a container's create.
type startTimes struct {
	pullStarted, pullDone, created time.Time
	pull                           *agentapi.PullImageResponse
	policyNs                       int64 // the guest's agent policy decisions so far
}

// teeLabel names what the handler's guest runs on, for the timeline.
func teeLabel(cfg config.Config) string {
	if cfg.TEE == config.TEEEmulated {
		return "emulated-" + cfg.EmulatedPlatform
	}
	return cfg.TEE
}

// logTimeline logs the start timeline of container c of the VM sb, which
// started at started.
func logTimeline(ctx context.Context, sb *sandbox, sandboxID string, c *container, started time.Time) {
	at, us := timeline.FormatTime, timeline.Microseconds
	f := log.Fields{
		timeline.Container: c.id, timeline.Sandbox: sandboxID, timeline.TEE: sb.tee, timeline.Image: c.image,
		timeline.VMRequested: at(sb.times.requested), timeline.QEMUStarted: at(sb.times.qemuStarted),
		timeline.AgentReady: at(sb.times.agentReady), timeline.SandboxReady: at(sb.times.ready),
		timeline.PullStarted: at(c.times.pullStarted), timeline.PullDone: at(c.times.pullDone),
		timeline.Created: at(c.times.created), timeline.Started: at(started),
		timeline.PolicyUS: us(c.times.policyNs),
	}
	if p := c.times.pull; p != nil {
		f[timeline.Encrypted] = p.GetEncrypted()
		f[timeline.ResolveUS], f[timeline.FetchUS] = us(p.GetResolveNs()), us(p.GetFetchNs())
		f[timeline.DecryptUS], f[timeline.UnpackUS] = us(p.GetDecryptNs()), us(p.GetUnpackNs())
	}
	log.G(ctx).WithFields(f).Info(timeline.Msg)
}

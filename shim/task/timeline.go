package task

import (
	"context"
	"time"

	"github.com/containerd/log"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/config"
)

// The pod start timeline: when each step of a container's start ended, on
// the host's clock, with the guest's own measure of the image pull. The shim
// logs it once per container when the container starts (containerd copies
// shim logs into its own), for operators asking where a slow start went, and
// for ci/timeline (make demo, make bench-e2e), which lines it up with the
// KBS's audit of the attestation and key release.

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
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	us := func(ns int64) int64 { return ns / int64(time.Microsecond) }
	f := log.Fields{
		"container": c.id, "sandbox": sandboxID, "tee": sb.tee, "image": c.image,
		"vm_requested": at(sb.times.requested), "qemu_started": at(sb.times.qemuStarted),
		"agent_ready": at(sb.times.agentReady), "sandbox_ready": at(sb.times.ready),
		"pull_started": at(c.times.pullStarted), "pull_done": at(c.times.pullDone),
		"created": at(c.times.created), "started": at(started),
		"policy_us": us(c.times.policyNs),
	}
	if p := c.times.pull; p != nil {
		f["encrypted"] = p.GetEncrypted()
		f["resolve_us"], f["fetch_us"] = us(p.GetResolveNs()), us(p.GetFetchNs())
		f["decrypt_us"], f["unpack_us"] = us(p.GetDecryptNs()), us(p.GetUnpackNs())
	}
	log.G(ctx).WithFields(f).Info("pod start timeline")
}

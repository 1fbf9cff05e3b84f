// Package agent is cloak-agent's gRPC service (agentapi.AgentService): the
// sandbox (network, attestation agent), images pulled in the guest, and
// containers run with runc on an overlay of those images. Everything in a
// request is host-controlled and checked here before it reaches runc.
package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/agentpolicy"
	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/guest-image/agent/reaper"
	"github.com/cloak-containers/cloak/guest-image/attester"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
	"github.com/cloak-containers/cloak/guest-image/pull"
	"github.com/cloak-containers/cloak/internal/version"
)

// Puller pulls, verifies, decrypts and unpacks an image in the guest
// (pull.Pull). Its errors should be *pull.Error, which carry the
// agentapi reason the host sees.
type Puller interface {
	Pull(ctx context.Context, image string, opts pull.Options) (*pull.Image, error)
}

// Network applies the sandbox's network configuration, as hostinput
// validated it, in the guest.
type Network interface {
	Apply(ctx context.Context, n *hostinput.Network) error
}

// Attester starts the attestation agent for the sandbox's initdata.
type Attester interface {
	Start(ctx context.Context, initdata []byte, log *slog.Logger) (AttestationAgent, error)
}

// AttestationAgent is a running cloak-aa.
type AttestationAgent interface {
	KeyProviderSocket() string
	// GetResource fetches a KBS resource for this guest (sealed secrets).
	GetResource(ctx context.Context, uri string) ([]byte, error)
	// TEE is the TEE whose report bound the initdata: snp or tdx
	// (hardware or emulated) make the sandbox confidential.
	TEE() string
	Stop() error
}

// Config configures a Server. Puller, Net and Attester are required.
type Config struct {
	Log        *slog.Logger
	StateDir   string // default /run/cloak
	RuncBinary string // default /usr/bin/runc
	Puller     Puller
	Net        Network
	Attester   Attester
	// PowerOff is called after DestroySandbox has answered; nil = do nothing
	// (tests, or an agent that is not PID 1).
	PowerOff func()
	// NoPivotRoot makes runc enter container rootfs with MS_MOVE+chroot
	// instead of pivot_root(2), which the kernel refuses while the guest's
	// own root is the initramfs. Each container still gets its own mount
	// namespace; the VM remains the isolation boundary of the pod.
	NoPivotRoot bool
}

// Server implements agentapi.AgentServiceServer.
type Server struct {
	agentapi.UnimplementedAgentServiceServer

	cfg    Config
	log    *slog.Logger
	runc   *runc.Runc
	reaper *reaper.Reaper
	pulls  singleflight.Group
	oom    oomHub

	mu         sync.Mutex
	sandbox    *agentapi.CreateSandboxRequest // nil until CreateSandbox
	aa         AttestationAgent
	images     map[string]*pull.Image
	containers map[string]*container
	destroyed  bool
	sharedFS   bool // the host's virtio-fs share is mounted at virtiofsDir
	// policy is the sandbox's agent policy (gate.go), nil until
	// CreateSandbox installed it.
	policy *agentpolicy.Policy
	// policyTime is the time spent in policy decisions, for the pod start
	// timeline.
	policyTime atomic.Int64
}

var setMonitor sync.Once

// New returns a Server. It makes the process-wide reaper go-runc's process
// monitor: go-runc's monitor is a package variable, and an agent process
// serves exactly one Server.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/run/cloak"
	}
	if cfg.RuncBinary == "" {
		cfg.RuncBinary = "/usr/bin/runc"
	}
	r := reaper.Default()
	// go-runc's Monitor is a package global its goroutines read: set it
	// once (tests make several Servers in one process).
	setMonitor.Do(func() { runc.Monitor = r })
	return &Server{
		cfg:    cfg,
		log:    cfg.Log,
		reaper: r,
		runc: &runc.Runc{
			Command:   cfg.RuncBinary,
			Root:      filepath.Join(cfg.StateDir, "runc"),
			LogFormat: runc.JSON,
		},
		oom:        oomHub{subs: map[chan *agentapi.OOMEvent]struct{}{}},
		images:     map[string]*pull.Image{},
		containers: map[string]*container{},
	}
}

// Check answers SERVING: the server is registered only once PID-1 setup
// is done.
func (s *Server) Check(context.Context, *agentapi.CheckRequest) (*agentapi.CheckResponse, error) {
	return &agentapi.CheckResponse{Status: "SERVING"}, nil
}

// Version reports the agent (Cloak's build, internal/version), API and
// guest kernel versions.
func (s *Server) Version(context.Context, *agentapi.VersionRequest) (*agentapi.VersionResponse, error) {
	var u unix.Utsname
	release := ""
	if err := unix.Uname(&u); err == nil {
		release = unix.ByteSliceToString(u.Release[:])
	}
	return &agentapi.VersionResponse{AgentVersion: version.Version, ApiVersion: "v1", KernelRelease: release}, nil
}

// CreateSandbox configures the guest for the pod, once.
func (s *Server) CreateSandbox(ctx context.Context, req *agentapi.CreateSandboxRequest) (*agentapi.CreateSandboxResponse, error) {
	cfg, err := hostinput.Sandbox(req)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.destroyed {
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonSandboxNotReady, "the sandbox was destroyed; the VM is powering off")
	}
	if s.sandbox != nil {
		return nil, agentErr(codes.AlreadyExists, agentapi.ReasonAlreadyExists, "sandbox %q already exists in this VM (one sandbox per VM)", s.sandbox.GetSandboxId())
	}
	for _, dir := range []string{s.cfg.StateDir, s.sharedDir(), s.storeDir(), filepath.Join(s.cfg.StateDir, "containers")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "create sandbox %q: %v", req.GetSandboxId(), err)
		}
	}
	if len(req.GetInitdata()) > 0 {
		// The attestation agent lives as long as the sandbox, not this call.
		aa, err := s.cfg.Attester.Start(context.WithoutCancel(ctx), req.GetInitdata(), s.log)
		if err != nil {
			var mismatch *attester.InitdataMismatchError
			var pcrBound *attester.InitdataPCRError
			var tdxMismatch *attester.MRConfigIDMismatchError
			if errors.As(err, &mismatch) || errors.As(err, &pcrBound) || errors.As(err, &tdxMismatch) {
				return nil, agentErr(codes.PermissionDenied, agentapi.ReasonInitdataMismatch, "sandbox %q: %v", req.GetSandboxId(), err)
			}
			return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonAttestationAgent, "sandbox %q: start the attestation agent: %v", req.GetSandboxId(), err)
		}
		s.aa = aa
	}
	// The policy comes from the initdata the attestation agent just
	// verified against the TEE report, and decides this very request before
	// anything of it (network, share) is applied.
	policy, err := s.installPolicy(req.GetSandboxId(), req.GetInitdata(), s.teeOf())
	if err != nil {
		s.stopAttestation()
		return nil, err
	}
	if err := s.decideWith(ctx, policy, "CreateSandboxRequest", req, nil); err != nil {
		s.stopAttestation()
		return nil, err
	}
	if err := s.cfg.Net.Apply(ctx, cfg.Network); err != nil {
		s.stopAttestation()
		return nil, invalid("sandbox %q: network configuration: %v", req.GetSandboxId(), err)
	}
	if tag := req.GetSharedFsTag(); tag != "" && !s.sharedFS {
		// The guest enforces this itself: the shim's configuration check
		// is the host's word, and the host is what a confidential guest
		// does not trust.
		if tee := s.teeOf(); tee == kbstypes.TeeSNP || tee == kbstypes.TeeTDX {
			s.stopAttestation()
			return nil, agentErr(codes.PermissionDenied, agentapi.ReasonPolicy,
				"sandbox %q: the host asked to mount its directory (virtio-fs tag %q) into a confidential %s guest: refused; a confidential runtime handler shares no host directory (shared_fs = \"none\")",
				req.GetSandboxId(), tag, tee)
		}
		if err := s.mountSharedFS(tag); err != nil {
			s.stopAttestation()
			return nil, err
		}
		s.sharedFS = true
	}
	s.sandbox = req
	s.policy = policy
	s.log.Info("sandbox created", "sandbox", req.GetSandboxId(), "hostname", req.GetHostname(), "attestation", s.aa != nil)
	return &agentapi.CreateSandboxResponse{}, nil
}

// teeOf is the TEE the sandbox's attestation agent attests with, "" when
// there is none.
func (s *Server) teeOf() string {
	if s.aa == nil {
		return ""
	}
	return s.aa.TEE()
}

// stopAttestation stops the attestation agent of a sandbox that was not
// created. The caller holds s.mu.
func (s *Server) stopAttestation() {
	if s.aa != nil {
		_ = s.aa.Stop()
		s.aa = nil
	}
}

// sharedDir holds guest files containers may bind-mount.
func (s *Server) sharedDir() string { return filepath.Join(s.cfg.StateDir, "sandbox") }
func (s *Server) storeDir() string  { return filepath.Join(s.cfg.StateDir, "images") }

// specRules are the bind sources a container spec may use in this guest.
func (s *Server) specRules() hostinput.SpecRules {
	return hostinput.SpecRules{
		BindDirs:  []string{s.sharedDir()},
		BindFiles: []string{"/etc/resolv.conf", "/etc/hosts", "/etc/hostname"},
	}
}

// ready returns the sandbox error for calls that need CreateSandbox first.
// Callers hold s.mu.
func (s *Server) readyLocked() error {
	if s.destroyed {
		return agentErr(codes.FailedPrecondition, agentapi.ReasonSandboxNotReady, "the sandbox was destroyed; the VM is powering off")
	}
	if s.sandbox == nil {
		return agentErr(codes.FailedPrecondition, agentapi.ReasonSandboxNotReady, "no sandbox yet; call CreateSandbox first")
	}
	return nil
}

// PullImage pulls an image into the guest; an image already pulled in this
// sandbox is answered from memory (concurrent pulls of one reference share
// one download).
func (s *Server) PullImage(ctx context.Context, req *agentapi.PullImageRequest) (*agentapi.PullImageResponse, error) {
	if err := hostinput.Pull(req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	err := s.readyLocked()
	img := s.images[req.GetImage()]
	keySocket := ""
	if s.aa != nil {
		keySocket = s.aa.KeyProviderSocket()
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if img != nil {
		return img.Response, nil
	}
	platform := req.GetPlatform()
	if platform == "" {
		platform = "linux/amd64"
	}
	v, err, _ := s.pulls.Do(req.GetImage(), func() (any, error) {
		start := time.Now()
		img, err := s.cfg.Puller.Pull(ctx, req.GetImage(), pull.Options{
			Registry: req.GetRegistry(), Platform: platform, KeyProviderSocket: keySocket, StoreDir: s.storeDir(),
		})
		if err != nil {
			s.log.Warn("image pull failed", "image", req.GetImage(), "err", err)
			return nil, pullErr(req.GetImage(), err)
		}
		s.mu.Lock()
		s.images[req.GetImage()] = img
		s.mu.Unlock()
		s.log.Info("image pulled", "image", req.GetImage(), "digest", img.Response.GetManifestDigest(), "encrypted", img.Response.GetEncrypted(), "took", time.Since(start))
		return img, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*pull.Image).Response, nil
}

// DestroySandbox removes every container, stops the attestation agent and,
// once the answer is on its way, powers the VM off.
func (s *Server) DestroySandbox(ctx context.Context, _ *agentapi.DestroySandboxRequest) (*agentapi.DestroySandboxResponse, error) {
	s.mu.Lock()
	s.destroyed = true
	ids := make([]string, 0, len(s.containers))
	for id := range s.containers {
		ids = append(ids, id)
	}
	aa := s.aa
	s.aa = nil
	sandbox := s.sandbox
	s.mu.Unlock()

	var failed []string
	for _, id := range ids {
		if err := s.removeContainer(ctx, id, 0); err != nil {
			s.log.Error("remove container on destroy", "container", id, "err", err)
			failed = append(failed, id)
		}
	}
	if sandbox != nil {
		removeSandboxCgroups(sandbox.GetSandboxId())
	}
	if aa != nil {
		if err := aa.Stop(); err != nil {
			s.log.Warn("stop attestation agent", "err", err)
		}
	}
	if s.cfg.PowerOff != nil {
		go func() {
			// The call's context ends once the answer has been handed to the
			// transport; the grace lets it reach the host before the VM stops.
			<-ctx.Done()
			time.Sleep(200 * time.Millisecond)
			s.log.Info("powering off")
			s.cfg.PowerOff()
		}()
	}
	if len(failed) > 0 {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "destroy sandbox: could not remove containers %s; the VM powers off anyway", strings.Join(failed, ", "))
	}
	return &agentapi.DestroySandboxResponse{}, nil
}

// removeSandboxCgroups removes the (by now empty) parent cgroups that runc
// created for the sandbox's containers, on cgroup v1 and v2 alike; runc
// removes only each container's own.
func removeSandboxCgroups(sandboxID string) {
	for _, pattern := range []string{"/sys/fs/cgroup/*/cloak/" + sandboxID, "/sys/fs/cgroup/cloak/" + sandboxID} {
		dirs, _ := filepath.Glob(pattern)
		for _, d := range dirs {
			_ = os.Remove(d)
		}
	}
}

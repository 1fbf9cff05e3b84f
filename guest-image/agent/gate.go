package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/cloak-containers/cloak/agentpolicy"
	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

// The gate: every host request passes the pod's agent policy before the
// agent acts on it. GRPCOptions installs it as interceptors, so no handler
// can be reached without a decision; CreateSandbox, which carries the policy
// in its initdata, is decided by its handler once the initdata is verified
// (decide is the one function both use).

// GRPCOptions are the server options that put every AgentService call
// through the server's policy gate.
func GRPCOptions(s *Server) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.gateUnary),
		grpc.ChainStreamInterceptor(s.gateStream),
	}
}

// beforeSandbox are the requests served before CreateSandbox installed a
// policy: CreateSandbox is decided by the policy it brings; the others read
// nothing of a pod or end the VM, which the host can do anyway.
var beforeSandbox = map[string]bool{
	"CheckRequest": true, "VersionRequest": true, "GuestStatsRequest": true,
	"CreateSandboxRequest": true, "DestroySandboxRequest": true,
}

func (s *Server) gateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	name := agentpolicy.RequestOf(info.FullMethod)
	if name == "" {
		return nil, agentErr(codes.Unimplemented, agentapi.ReasonPolicy, "%s is not an agent method", info.FullMethod)
	}
	if name != "CreateSandboxRequest" {
		m, ok := req.(proto.Message)
		if !ok {
			return nil, agentErr(codes.Internal, agentapi.ReasonPolicy, "%s: request is not a protobuf message", name)
		}
		if err := s.decide(ctx, name, m); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

func (s *Server) gateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	name := agentpolicy.RequestOf(info.FullMethod)
	if name == "" {
		return agentErr(codes.Unimplemented, agentapi.ReasonPolicy, "%s is not an agent method", info.FullMethod)
	}
	return handler(srv, &gatedStream{ServerStream: ss, s: s, request: name})
}

// gatedStream decides each message the host sends on a stream: the
// OOMEvents request, and each ProcessIO attach and stdin chunk.
type gatedStream struct {
	grpc.ServerStream
	s        *Server
	request  string
	attached *agentapi.ProcessIORequest_Attach
}

func (g *gatedStream) RecvMsg(m any) error {
	if err := g.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	msg, ok := m.(proto.Message)
	if !ok {
		return agentErr(codes.Internal, agentapi.ReasonPolicy, "%s: message is not a protobuf message", g.request)
	}
	if io, ok := m.(*agentapi.ProcessIORequest); ok {
		if a := io.GetAttach(); a != nil && g.attached == nil {
			g.attached = a
		}
		return g.s.decideIO(g.Context(), io, g.attached)
	}
	return g.s.decide(g.Context(), g.request, msg)
}

// decide evaluates the policy's rule for one request; a denial is
// PermissionDenied with reason POLICY_DENIED and the policy's reasons.
func (s *Server) decide(ctx context.Context, name string, req proto.Message) error {
	return s.decideWith(ctx, s.currentPolicy(), name, req, s.facts(req))
}

func (s *Server) currentPolicy() *agentpolicy.Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policy
}

func (s *Server) decideIO(ctx context.Context, req *agentapi.ProcessIORequest, att *agentapi.ProcessIORequest_Attach) error {
	facts := map[string]any{}
	if att != nil {
		if c := s.containerFacts(att.GetContainerId()); c != nil {
			facts["container"] = c
		}
		facts["exec"] = att.GetExecId() != ""
	}
	return s.decideWith(ctx, s.currentPolicy(), "ProcessIORequest", req, facts)
}

// decideWith is the one decision function: p is the sandbox's policy (nil
// before CreateSandbox).
func (s *Server) decideWith(ctx context.Context, p *agentpolicy.Policy, name string, req proto.Message, facts map[string]any) error {
	method := strings.TrimSuffix(name, "Request")
	if p == nil {
		if beforeSandbox[name] {
			return nil
		}
		return agentErr(codes.FailedPrecondition, agentapi.ReasonSandboxNotReady, "%s: no sandbox yet; call CreateSandbox first", method)
	}
	start := time.Now()
	in, err := agentpolicy.Input(req, facts)
	if err != nil {
		return invalid("%s: %v", method, err)
	}
	d, err := p.Decide(ctx, name, in)
	s.policyTime.Add(int64(time.Since(start)))
	if errors.Is(err, agentpolicy.ErrNoRule) {
		return agentErr(codes.PermissionDenied, agentapi.ReasonPolicy, "%s denied: the pod's agent policy has no rule %s (regenerate the policy with this version's `cloak generate`)", method, name)
	}
	if err != nil {
		return agentErr(codes.PermissionDenied, agentapi.ReasonPolicy, "%s denied: %v", method, err)
	}
	if d.Allowed {
		return nil
	}
	why := "the rule " + name + " is false"
	if len(d.Reasons) > 0 {
		why = strings.Join(d.Reasons, "; ")
	}
	s.log.Warn("request denied by the agent policy", "request", name, "reasons", why)
	return agentErr(codes.PermissionDenied, agentapi.ReasonPolicy, "%s denied by the pod's agent policy: %s", method, why)
}

// facts are what the guest itself knows about a request, for the policy's
// input.guest: the digest it pulled for an image reference, and the
// container a request names (its name and the process it was created with).
func (s *Server) facts(req proto.Message) map[string]any {
	facts := map[string]any{}
	if r, ok := req.(*agentapi.CreateContainerRequest); ok {
		s.mu.Lock()
		if img := s.images[r.GetImage()]; img != nil {
			facts["image_digest"] = img.Response.GetManifestDigest()
		}
		s.mu.Unlock()
		return facts
	}
	if r, ok := req.(interface{ GetContainerId() string }); ok {
		if c := s.containerFacts(r.GetContainerId()); c != nil {
			facts["container"] = c
		}
	}
	if r, ok := req.(interface{ GetExecId() string }); ok {
		facts["exec"] = r.GetExecId() != ""
	}
	return facts
}

func (s *Server) containerFacts(id string) map[string]any {
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c == nil || c.policyName == "" && c.policyProcess == nil {
		return nil
	}
	return map[string]any{"name": c.policyName, "process": c.policyProcess}
}

// recordForPolicy keeps what the policy compares later requests with: the
// container's name and the process the host asked for at create (an exec
// must run with its user, environment and directory).
func recordForPolicy(c *container, ociSpec []byte) {
	var s struct {
		Process     map[string]any    `json:"process"`
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(ociSpec, &s) != nil {
		return
	}
	c.policyName = s.Annotations["io.kubernetes.cri.container-name"]
	c.policyProcess = s.Process
}

// installPolicy compiles the policy of a sandbox's initdata once. A guest
// whose TEE report bound the initdata (snp or tdx, hardware or emulated)
// refuses initdata without a policy; other guests run with allow-all.
func (s *Server) installPolicy(sandboxID string, initdata []byte, tee string) (*agentpolicy.Policy, error) {
	src := ""
	if len(initdata) > 0 {
		// The attestation agent has checked the document as a whole; the
		// policy is all the gate needs of it.
		var doc struct {
			Data map[string]string `toml:"data"`
		}
		if err := toml.Unmarshal(initdata, &doc); err != nil {
			return nil, invalid("sandbox %q: initdata is not TOML: %v", sandboxID, err)
		}
		src = doc.Data["policy.rego"]
	}
	if src == "" {
		if tee == kbstypes.TeeSNP || tee == kbstypes.TeeTDX {
			return nil, agentErr(codes.PermissionDenied, agentapi.ReasonPolicy,
				"sandbox %q: the pod's initdata has no agent policy ([data] \"policy.rego\"), and a confidential %s guest runs nothing without one; generate it with `cloak generate pod.yaml` (docs/agent-policy.md)", sandboxID, tee)
		}
		src = agentpolicy.AllowAll
	}
	start := time.Now()
	p, err := agentpolicy.Compile([]byte(src))
	s.log.Info("agent policy compiled", "sandbox", sandboxID, "bytes", len(src), "allow_all", src == agentpolicy.AllowAll, "took", time.Since(start))
	if err != nil {
		return nil, agentErr(codes.InvalidArgument, agentapi.ReasonPolicy, "sandbox %q: %v", sandboxID, fmt.Errorf("the initdata's policy.rego: %w", err))
	}
	return p, nil
}

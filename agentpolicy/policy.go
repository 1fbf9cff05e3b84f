package agentpolicy

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// AllowAll is the policy of a pod without one on a handler without a TEE.
//
//go:embed allow-all.rego
var AllowAll string

// MaxSourceSize bounds a policy module (the rules are ~20 KiB, a pod's
// policy_data a few KiB more); initdata itself is bounded at 256 KiB.
const MaxSourceSize = 256 << 10

// Package is the Rego package every agent policy declares.
const Package = "agent_policy"

// forbiddenBuiltins reach outside the request: a decision depends only on
// its input and the policy itself.
var forbiddenBuiltins = map[string]bool{
	"http.send": true, "net.lookup_ip_addr": true, "opa.runtime": true,
	"time.now_ns": true, "rand.intn": true, "uuid.rfc4122": true,
}

var capabilities = func() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	caps.Builtins = slices.DeleteFunc(caps.Builtins, func(b *ast.Builtin) bool { return forbiddenBuiltins[b.Name] })
	return caps
}()

// Requests are the request message names of every AgentService method: a
// policy has one rule per name.
var Requests = func() []string {
	sd := agentapi.File_agent_proto.Services().ByName("AgentService")
	ms := sd.Methods()
	out := make([]string, 0, ms.Len())
	for i := range ms.Len() {
		out = append(out, string(ms.Get(i).Input().Name()))
	}
	return out
}()

// RequestOf maps a gRPC full method name ("/cloak.agent.v1.AgentService/
// CreateContainer") to its request message name; "" for a method that is
// not AgentService's.
func RequestOf(fullMethod string) string { return methodRequests[fullMethod] }

var methodRequests = func() map[string]string {
	sd := agentapi.File_agent_proto.Services().ByName("AgentService")
	m := map[string]string{}
	ms := sd.Methods()
	for i := range ms.Len() {
		md := ms.Get(i)
		m["/"+string(sd.FullName())+"/"+string(md.Name())] = string(md.Input().Name())
	}
	return m
}()

// Policy is a compiled agent policy. It is safe for concurrent use.
type Policy struct {
	mu    sync.Mutex
	allow map[string]*rego.PreparedEvalQuery // per request: data.agent_policy.<Request>
	why   map[string]*rego.PreparedEvalQuery // per request: data.agent_policy.reasons.<Request>
	rules map[string]bool
	comp  *ast.Compiler
}

// Compile parses and compiles a policy module once: every request's
// decision query is prepared here, so a decision is one evaluation.
func Compile(src []byte) (*Policy, error) {
	if len(src) > MaxSourceSize {
		return nil, fmt.Errorf("agent policy is %d bytes, larger than the %d-byte limit", len(src), MaxSourceSize)
	}
	mod, err := ast.ParseModuleWithOpts("policy.rego", string(src), ast.ParserOptions{RegoVersion: ast.RegoV1, Capabilities: capabilities})
	if err != nil {
		return nil, fmt.Errorf("agent policy does not parse: %w", err)
	}
	if got := mod.Package.Path.String(); got != "data."+Package {
		return nil, fmt.Errorf("agent policy declares package %s: want `package %s`", strings.TrimPrefix(got, "data."), Package)
	}
	comp := ast.NewCompiler().WithCapabilities(capabilities)
	comp.Compile(map[string]*ast.Module{"policy.rego": mod})
	if comp.Failed() {
		return nil, fmt.Errorf("agent policy does not compile: %w", comp.Errors)
	}
	p := &Policy{
		allow: map[string]*rego.PreparedEvalQuery{},
		why:   map[string]*rego.PreparedEvalQuery{},
		rules: map[string]bool{},
		comp:  comp,
	}
	for _, r := range mod.Rules {
		p.rules[r.Head.Ref().String()] = true
		if len(r.Head.Ref()) > 0 {
			p.rules[r.Head.Ref()[0].Value.String()] = true
		}
	}
	ctx := context.Background()
	for _, name := range Requests {
		q, err := rego.New(rego.Compiler(comp), rego.Query("data."+Package+"."+name)).PrepareForEval(ctx)
		if err != nil {
			return nil, fmt.Errorf("agent policy: prepare %s: %w", name, err)
		}
		p.allow[name] = &q
	}
	return p, nil
}

// HasRule reports whether the module defines a rule named name at its top
// level (e.g. "CreateContainerRequest").
func (p *Policy) HasRule(name string) bool { return p.rules[name] }

// Decision is the policy's answer for one request.
type Decision struct {
	Allowed bool
	// Reasons say why a request was denied, from the policy's
	// reasons.<Request> rule; empty when allowed, or when the policy gives
	// none.
	Reasons []string
}

// ErrNoRule is returned (wrapped) when the policy has no rule for a request:
// it is denied, never allowed by default.
var ErrNoRule = errors.New("the pod's agent policy has no rule for this request")

// Decide evaluates the rule for request (a request message name) on input,
// which must be JSON-shaped (map[string]any, []any, string, float64, bool,
// nil, json.Number). An undefined rule or a non-boolean result denies.
func (p *Policy) Decide(ctx context.Context, request string, input any) (Decision, error) {
	q, ok := p.allow[request]
	if !ok {
		return Decision{}, fmt.Errorf("%s: %w", request, ErrNoRule)
	}
	rs, err := q.Eval(ctx, rego.EvalInput(input))
	if err != nil {
		return Decision{}, fmt.Errorf("evaluate the agent policy for %s: %w", request, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return Decision{}, fmt.Errorf("%s: %w", request, ErrNoRule)
	}
	if allowed, ok := rs[0].Expressions[0].Value.(bool); ok && allowed {
		return Decision{Allowed: true}, nil
	}
	return Decision{Reasons: p.reasons(ctx, request, input)}, nil
}

// reasons evaluates reasons.<request>, prepared on first use: it runs only
// for denials.
func (p *Policy) reasons(ctx context.Context, request string, input any) []string {
	p.mu.Lock()
	q, ok := p.why[request]
	if !ok {
		pq, err := rego.New(rego.Compiler(p.comp), rego.Query("data."+Package+".reasons."+request)).PrepareForEval(ctx)
		if err == nil {
			q = &pq
		}
		p.why[request] = q
	}
	p.mu.Unlock()
	if q == nil {
		return nil
	}
	rs, err := q.Eval(ctx, rego.EvalInput(input))
	if err != nil || len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil
	}
	var out []string
	if vs, ok := rs[0].Expressions[0].Value.([]any); ok {
		for _, v := range vs {
			if s, ok := v.(string); ok {
				out = append(out, s)
			}
		}
	}
	slices.Sort(out)
	return out
}

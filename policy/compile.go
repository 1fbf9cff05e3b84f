// Package policy compiles and evaluates the KBS's Rego policies with OPA:
// the attestation policy, which turns verified evidence claims and reference
// values into an EAR trust vector, and the resource policy, which decides
// whether an EAR token may receive a resource.
//
// Policies follow Trustee's conventions so that policies written for Trustee
// load unchanged: both are `package policy`, in Rego v1 or the older v0
// syntax. Each policy is compiled once and can then be evaluated by many
// goroutines at the same time.
package policy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// MaxSourceSize bounds a policy's source. Real policies are a few KiB; the
// limit keeps a careless or hostile upload from costing much compile time.
const MaxSourceSize = 256 << 10

// packagePath is the package every KBS policy must declare (Trustee's rule).
const packagePath = "data.policy"

// maxReportedErrors bounds how many compile errors an error message lists.
const maxReportedErrors = 5

// forbiddenBuiltins reach outside the policy's inputs. A policy decides on
// the claims it is given: network calls could leak claims or make a decision
// depend on an unauthenticated remote answer, and opa.runtime exposes the
// KBS's environment variables.
var forbiddenBuiltins = map[string]bool{
	"http.send":          true,
	"net.lookup_ip_addr": true,
	"opa.runtime":        true,
}

// capabilities are OPA's builtins minus forbiddenBuiltins, so that a policy
// calling one of them is refused at compile time with the builtin's name.
var capabilities = func() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion() // a fresh copy, safe to edit
	caps.Builtins = slices.DeleteFunc(caps.Builtins, func(b *ast.Builtin) bool { return forbiddenBuiltins[b.Name] })
	return caps
}()

// parse parses src as a `package policy` module, in Rego v1 syntax or, failing
// that, in v0 syntax (older Trustee documentation uses v0).
func parse(kind string, src []byte) (*ast.Module, error) {
	if len(src) > MaxSourceSize {
		return nil, fmt.Errorf("%s policy is %d bytes, larger than the %d-byte limit", kind, len(src), MaxSourceSize)
	}
	if isBlank(src) {
		return nil, fmt.Errorf("%s policy has only comments and blank lines: want a Rego module starting with `package policy`", kind)
	}
	filename := kind + ".rego"
	mod, errV1 := ast.ParseModuleWithOpts(filename, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
	if errV1 != nil {
		var errV0 error
		mod, errV0 = ast.ParseModuleWithOpts(filename, string(src), ast.ParserOptions{RegoVersion: ast.RegoV0})
		if errV0 != nil {
			// Report the dialect whose parser got further: it is more likely
			// the one the author wrote in, so its error points at the typo
			// rather than at the first v0/v1 difference.
			err := errV1
			if errorOffset(errV0) > errorOffset(errV1) {
				err = errV0
			}
			return nil, fmt.Errorf("parse %s policy (tried Rego v1 and v0): %s", kind, describe(err))
		}
	}
	if got := mod.Package.Path.String(); got != packagePath {
		return nil, fmt.Errorf("%s policy declares package %q: KBS policies must declare `package policy`",
			kind, strings.TrimPrefix(got, "data."))
	}
	return mod, nil
}

// prepare compiles query against mod once, so evaluations only pay for
// evaluation.
func prepare(ctx context.Context, kind, query string, mod *ast.Module) (rego.PreparedEvalQuery, error) {
	pq, err := rego.New(
		rego.Query(query),
		rego.ParsedModule(mod),
		rego.Capabilities(capabilities),
	).PrepareForEval(ctx)
	if err != nil {
		return rego.PreparedEvalQuery{}, fmt.Errorf("compile %s policy: %s", kind, describe(err))
	}
	return pq, nil
}

// evalError makes an evaluation stopped by ctx match context.Canceled or
// context.DeadlineExceeded with errors.Is (OPA's cancel error does not wrap
// them), so callers can tell a timeout from a policy failure.
func evalError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("evaluation stopped: %w", ctxErr)
	}
	return err
}

// ruleNames returns the names of the rules mod defines directly under
// `package policy`, in source order. Rules with nested heads (a.b := ...)
// cannot be trust claims, allow or deny rules, so they are left out.
func ruleNames(mod *ast.Module) []string {
	var names []string
	seen := map[string]bool{}
	for _, r := range mod.Rules {
		ref := r.Head.Ref()
		if len(ref) != 1 {
			continue
		}
		name := ref.String()
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}

// errorOffset estimates how far into the source an OPA error points.
func errorOffset(err error) int {
	var errs ast.Errors
	if !errors.As(err, &errs) || len(errs) == 0 || errs[0].Location == nil {
		return -1
	}
	return errs[0].Location.Row<<16 + errs[0].Location.Col
}

// describe renders OPA errors as "line L, column C: message" so that an
// admin can find the mistake without knowing OPA's error format.
func describe(err error) string {
	var errs ast.Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		return err.Error()
	}
	var parts []string
	for i, e := range errs {
		if i == maxReportedErrors {
			parts = append(parts, fmt.Sprintf("and %d more errors", len(errs)-i))
			break
		}
		msg := e.Message
		if e.Location != nil {
			msg = fmt.Sprintf("line %d, column %d: %s", e.Location.Row, e.Location.Col, msg)
		}
		parts = append(parts, msg)
	}
	return strings.Join(parts, "; ")
}

// isBlank reports whether src holds no Rego statement, only comments and
// whitespace; OPA's own message for that ("empty module") does not say what
// to write.
func isBlank(src []byte) bool {
	for line := range strings.SplitSeq(string(src), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

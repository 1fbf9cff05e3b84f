// Package importrule states Cloak's import rule (docs/architecture.md,
// "Source tree and import rule") as data and checks a dependency graph against it: the
// trust boundary between guest, host and KBS is in the tree, so a guest
// binary that links host code, or a production binary that links an
// emulated TEE, must fail a test rather than wait for a reviewer. The test
// in this package runs it on `go list -deps` of every binary in cmd/.
package importrule

import (
	"fmt"
	"slices"
	"strings"
)

// Rule forbids the binaries it applies to to link any package under
// Forbidden (directories relative to the module root, e.g. "shim").
type Rule struct {
	// Why is the rule in words, printed with each violation.
	Why string
	// Binaries are the cmd/ directories the rule applies to ("cloak-agent");
	// empty: every binary except those in Except.
	Binaries []string
	Except   []string
	// Forbidden are the trees those binaries must not link.
	Forbidden []string
}

// Rules is the import rule of docs/architecture.md. internal/, api/kbstypes/,
// api/agentapi/, agentpolicy/ and measurements/ are neutral: either side may
// import them (each README says which packages of them a side uses).
var Rules = []Rule{
	{
		Why:       "guest binaries run inside the TEE and must not link host or KBS code",
		Binaries:  []string{"cloak-agent", "cloak-aa"},
		Forbidden: []string{"shim", "kbs", "policy", "emulated", "cmd"},
	},
	{
		Why:       "the KBS is the relying party and must not link guest code",
		Binaries:  []string{"kbs"},
		Forbidden: []string{"guest-image", "attestation-agent"},
	},
	{
		Why:       "the emulated TEE platforms are test platforms; only the shim (tee = \"emulated\") and cloak-image (emulated-root) may link them",
		Except:    []string{"containerd-shim-cloak-v2", "cloak-image"},
		Forbidden: []string{"emulated"},
	},
}

// Violations checks the binaries (cmd/ directory names) of module against
// rules. imports maps each package's import path to the import paths it
// imports (go list's Imports). A violation names the binary, the shortest
// import chain from its main package to the first forbidden package on that
// path, and the rule; a forbidden package reached only through another
// forbidden one is not repeated.
func Violations(module string, binaries []string, imports map[string][]string, rules []Rule) []string {
	var out []string
	for _, bin := range binaries {
		root := module + "/cmd/" + bin
		var forbidden []string
		var why []string
		for _, r := range rules {
			if !applies(r, bin) {
				continue
			}
			for _, dir := range r.Forbidden {
				forbidden = append(forbidden, module+"/"+dir)
				why = append(why, r.Why)
			}
		}
		if len(forbidden) == 0 {
			continue
		}
		match := func(pkg string) int {
			if pkg == root || strings.HasPrefix(pkg, root+"/") {
				return -1 // a binary's own packages (cmd/kbsctl/...) are its own
			}
			for i, dir := range forbidden {
				if pkg == dir || strings.HasPrefix(pkg, dir+"/") {
					return i
				}
			}
			return -1
		}
		// Breadth first, so each chain is a shortest one.
		parent := map[string]string{root: ""}
		queue := []string{root}
		for len(queue) > 0 {
			pkg := queue[0]
			queue = queue[1:]
			if i := match(pkg); i >= 0 {
				out = append(out, fmt.Sprintf("cmd/%s links %s: %s (%s)",
					bin, strings.TrimPrefix(pkg, module+"/"), chain(module, parent, pkg), why[i]))
				continue // its own imports are part of the same mistake
			}
			deps := slices.Clone(imports[pkg])
			slices.Sort(deps)
			for _, d := range deps {
				if _, seen := parent[d]; !seen {
					parent[d] = pkg
					queue = append(queue, d)
				}
			}
		}
	}
	return out
}

func applies(r Rule, bin string) bool {
	if len(r.Binaries) > 0 {
		return slices.Contains(r.Binaries, bin)
	}
	return !slices.Contains(r.Except, bin)
}

// chain is the import path from the binary's main package to pkg, module
// prefix dropped: "cmd/kbs -> kbs/server -> attestation-agent/rcar".
func chain(module string, parent map[string]string, pkg string) string {
	var path []string
	for p := pkg; p != ""; p = parent[p] {
		path = append(path, strings.TrimPrefix(p, module+"/"))
	}
	slices.Reverse(path)
	return strings.Join(path, " -> ")
}

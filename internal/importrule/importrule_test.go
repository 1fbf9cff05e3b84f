package importrule

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/cloak-containers/cloak"

const ruleDoc = "docs/architecture.md#source-tree-and-import-rule"

// TestBinariesKeepImportRule lists what every binary in cmd/ links (go list
// -deps, the packages the linker sees, tests excluded) and fails on each
// import that crosses the trust boundary.
func TestBinariesKeepImportRule(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the import rule needs the go command on PATH: %v", err)
	}
	cmd := exec.Command(goTool, "list", "-deps", "-json=ImportPath,Name,Imports", "./cmd/...")
	cmd.Dir = filepath.Join("..", "..")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/...: %v\n%s", err, stderr.Bytes())
	}
	imports := map[string][]string{}
	var binaries []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath, Name string
			Imports          []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		imports[p.ImportPath] = p.Imports
		if bin, ok := strings.CutPrefix(p.ImportPath, module+"/cmd/"); ok && p.Name == "main" && !strings.Contains(bin, "/") {
			binaries = append(binaries, bin)
		}
	}
	// A renamed binary must not silently leave a rule with nothing to check.
	for _, r := range Rules {
		for _, b := range slices.Concat(r.Binaries, r.Except) {
			if !slices.Contains(binaries, b) {
				t.Errorf("rule %q names cmd/%s, which go list did not find (binaries: %v): update Rules and %s", r.Why, b, binaries, ruleDoc)
			}
		}
	}
	if len(binaries) < 8 {
		t.Errorf("go list found %d binaries in cmd/ (%v), want at least 8", len(binaries), binaries)
	}
	for _, v := range Violations(module, binaries, imports, Rules) {
		t.Errorf("%s\n\tsee %s: move the shared code to a package both sides may import, or drop the import", v, ruleDoc)
	}
}

// TestViolations checks the rule on made-up graphs, so that a check that
// never fires cannot pass unnoticed.
func TestViolations(t *testing.T) {
	m := func(p string) string { return module + "/" + p }
	imports := map[string][]string{
		m("cmd/cloak-agent"):              {m("guest-image/agent"), "fmt"},
		m("guest-image/agent"):            {m("guest-image/pull"), m("internal/atomicfile")},
		m("guest-image/pull"):             {m("shim/config")},
		m("shim/config"):                  {m("shim/hypervisor/qemu")},
		m("cmd/cloak-aa"):                 {m("cmd/cloak-aa/internal"), m("kbstypes")},
		m("cmd/kbs"):                      {m("kbs/server")},
		m("kbs/server"):                   {m("attestation-agent/rcar"), m("policy")},
		m("cmd/kbsctl"):                   {m("kbs/adminclient")},
		m("kbs/adminclient"):              {m("emulated/snp")},
		m("cmd/cloak-image"):              {m("emulated/snp")},
		m("cmd/containerd-shim-cloak-v2"): {m("shim/task")},
		m("shim/task"):                    {m("emulated/tdx")},
		m("emulated/snp"):                 {m("emulated/root")},
	}
	bins := []string{"cloak-agent", "cloak-aa", "kbs", "kbsctl", "cloak-image", "containerd-shim-cloak-v2"}
	got := Violations(module, bins, imports, Rules)
	want := []string{
		"cmd/cloak-agent links shim/config: cmd/cloak-agent -> guest-image/agent -> guest-image/pull -> shim/config (guest binaries",
		"cmd/kbs links attestation-agent/rcar: cmd/kbs -> kbs/server -> attestation-agent/rcar (the KBS",
		"cmd/kbsctl links emulated/snp: cmd/kbsctl -> kbs/adminclient -> emulated/snp (the emulated TEE platforms",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d violations, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("violation %d:\n got %s\nwant %s...", i, got[i], want[i])
		}
	}
}

// TestContractsImportOnlyContracts: the packages under api/ are what both
// sides of the trust boundary import, so they may import only each other
// and libraries; one import of guest, host or KBS code would put that code
// on both sides.
func TestContractsImportOnlyContracts(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./api/...")
	cmd.Dir = filepath.Join("..", "..")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./api/...: %v\n%s", err, stderr.Bytes())
	}
	n := 0
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		n++
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, module+"/") && !strings.HasPrefix(imp, module+"/api/") {
				t.Errorf("%s imports %s: api/ packages may import only api/ and libraries (%s)", f[0], imp, ruleDoc)
			}
		}
	}
	if n < 7 {
		t.Errorf("go list found %d packages under api/, want at least 7 (kbstypes, agentapi, adminapi, attestationv1, keyprovider, emulatedsp, timeline)", n)
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// runT runs the command and returns its exit code, stdout and stderr.
func runT(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	testLog   = "testdata/containerd.log"
	testAudit = "testdata/audit.json"
)

func TestShowText(t *testing.T) {
	code, out, errOut := runT(t, "", "show", "--log", testLog, "--audit", testAudit)
	if code != exitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	want := `Pod start timeline: container 4f1c2d3e (pod 9a8b7c6d, emulated-snp, encrypted image 10.88.0.1:5000/demo/secret:1)
   at (s)  step (s)  phase
    0.000     0.000  VM requested (the shim starts the pod's VM)
    0.412     0.412  QEMU started
    3.120     2.708  guest agent ready (VM boot)
    3.301     0.181  sandbox ready (network, initdata bound)
    4.000     0.699  image pull started in the guest
    4.101     0.101  manifest and config resolved
    4.850     0.749  attestation affirming at the KBS (audit #7)
    4.870     0.020  key released by the KBS (audit #8, default/image-key/demo)
    5.400     0.530  layers fetched, decrypted and unpacked (guest: fetch 0.200 s, decrypt 0.600 s incl. key, unpack 0.300 s)
    5.420     0.020  container created
    5.900     0.480  container started
total 5.900 s
`
	if out != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
}

func phaseNames(t *testing.T, args ...string) []string {
	t.Helper()
	code, out, errOut := runT(t, "", append([]string{"show", "--output", "json"}, args...)...)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var tl timeline
	if err := json.Unmarshal([]byte(out), &tl); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	var names []string
	for _, p := range tl.Phases {
		names = append(names, p.Name)
	}
	return names
}

func TestShowJSON(t *testing.T) {
	code, out, _ := runT(t, "", "show", "--log", testLog, "--audit", testAudit, "--output", "json")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"container": "4f1c2d3e5a6b7c8d9e0f", "sandbox": "9a8b7c6d5e4f3a2b", "tee": "emulated-snp",
		"image": "10.88.0.1:5000/demo/secret:1", "encrypted": true, "total_s": 5.9,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	phases := got["phases"].([]any)
	release := phases[7].(map[string]any)
	if want := map[string]any{"name": "release", "at_s": 4.87, "step_s": 0.02,
		"detail": "key released by the KBS (audit #8, default/image-key/demo)"}; !reflect.DeepEqual(release, want) {
		t.Errorf("phase 7 = %v, want %v", release, want)
	}
	if want := []string{"vm", "qemu", "agent", "sandbox", "pull", "resolve", "attest", "release", "layers", "created", "started"}; !reflect.DeepEqual(phaseNames(t, "--log", testLog, "--audit", testAudit), want) {
		t.Errorf("phases %v, want %v", phaseNames(t, "--log", testLog, "--audit", testAudit), want)
	}
}

func TestShowWithoutAudit(t *testing.T) {
	want := []string{"vm", "qemu", "agent", "sandbox", "pull", "resolve", "layers", "created", "started"}
	if got := phaseNames(t, "--log", testLog); !reflect.DeepEqual(got, want) {
		t.Errorf("phases %v, want %v", got, want)
	}
}

func TestShowTSV(t *testing.T) {
	code, out, _ := runT(t, "", "show", "--log", testLog, "--audit", testAudit, "--output", "tsv", "--label", "cloak-emulated")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	want := "cloak-emulated\tvm\t0.000000\ncloak-emulated\tqemu\t0.412000\ncloak-emulated\tagent\t2.708000\n" +
		"cloak-emulated\tsandbox\t0.181000\ncloak-emulated\tpull\t0.699000\ncloak-emulated\tresolve\t0.101000\n" +
		"cloak-emulated\tattest\t0.749000\ncloak-emulated\trelease\t0.020000\ncloak-emulated\tlayers\t0.530000\n" +
		"cloak-emulated\tcreated\t0.020000\ncloak-emulated\tstarted\t0.480000\ncloak-emulated\ttotal\t5.900000\n"
	if out != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
	// What show writes, median reads.
	code, med, errOut := runT(t, out+out, "median")
	if code != exitOK || !strings.Contains(med, "cloak-emulated (n=2)") || !strings.Contains(med, "5.900 [5.900-5.900]") {
		t.Errorf("median of show's tsv: exit %d\n%s%s", code, med, errOut)
	}
}

func TestShowPicksContainer(t *testing.T) {
	code, out, _ := runT(t, "", "show", "--log", testLog, "--container", "0ld")
	if code != exitOK || !strings.HasPrefix(out, "Pod start timeline: container 0ld0ld0l (pod 0ld0ld0l)\n") ||
		!strings.HasSuffix(out, "    9.900     9.900  container started\ntotal 9.900 s\n") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	code, _, errOut := runT(t, "", "show", "--log", testLog, "--container", "ffff")
	if code != exitFailure || !strings.Contains(errOut, `for a container "ffff": the log has lines for 4f1c2d3e, 0ld0ld0l (newest first)`) {
		t.Errorf("unknown container: exit %d: %s", code, errOut)
	}
	log := writeFile(t, "two.log", `msg="pod start timeline" container=abc1 started="2026-11-27T12:00:00Z"`+"\n"+
		`msg="pod start timeline" container=abc2 started="2026-11-27T12:00:00Z"`+"\n")
	code, _, errOut = runT(t, "", "show", "--log", log, "--container", "abc")
	if code != exitFailure || !strings.Contains(errOut, `container "abc" is ambiguous`) {
		t.Errorf("ambiguous container: exit %d: %s", code, errOut)
	}
}

// TestShowRefusals: a KBS that refused shows as such, and audit entries
// outside the pull are not this start's.
func TestShowRefusals(t *testing.T) {
	audit := writeFile(t, "audit.json", `{"entries":[
		{"seq":3,"time":"2026-11-27T12:00:03.9Z","kind":"release","verdict":"allow","resource":"a/b/before"},
		{"seq":4,"time":"2026-11-27T12:00:04.2Z","kind":"attest","verdict":"affirming"},
		{"seq":5,"time":"2026-11-27T12:00:04.3Z","kind":"attest","verdict":"contraindicated","check":"attestation-policy","detail":"snp.measurement is not a reference value"},
		{"seq":6,"time":"2026-11-27T12:00:04.3Z","kind":"release","verdict":"deny","resource":"default/image-key/demo","check":"resource-policy","detail":"the policy denies it"},
		{"seq":7,"time":"2026-11-27T12:00:05.41Z","kind":"release","verdict":"allow","resource":"a/b/after"}
	],"next":7}`)
	code, out, errOut := runT(t, "", "show", "--log", testLog, "--audit", audit)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"    4.300     0.199  attestation contraindicated at the KBS (audit #5: snp.measurement is not a reference value)\n",
		"    4.300     0.000  key withheld by the KBS (audit #6: the policy denies it)\n",
		"    5.400     1.100  layers fetched",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"#3", "#4", "#7", "before", "after"} {
		if strings.Contains(out, not) {
			t.Errorf("output has %q, outside the pull or not the last:\n%s", not, out)
		}
	}
}

// TestShowPartialLine: a line of an older or newer shim, with fields
// missing or unreadable, still shows what it has.
func TestShowPartialLine(t *testing.T) {
	log := writeFile(t, "partial.log", `time="2026-11-27T12:00:09Z" level=info msg="pod start timeline" container=c1 `+
		`pull_started="2026-11-27T12:00:04Z" pull_done=soon qemu_started="0001-01-01T00:00:00Z" resolve_us=lots `+
		`created="2026-11-27T12:00:05Z" started="2026-11-27T12:00:06Z" encrypted=false fetch_us=1000`+"\n")
	audit := writeFile(t, "audit.json", `{"seq":1,"time":"2026-11-27T12:00:04.5Z","kind":"release","verdict":"allow","resource":"r/t/k"}
{"seq":2,"time":"2026-11-27T12:00:05.5Z","kind":"attest","verdict":"affirming"}
`)
	code, out, errOut := runT(t, "", "show", "--log", log, "--audit", audit)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := `Pod start timeline: container c1
   at (s)  step (s)  phase
    0.000     0.000  image pull started in the guest
    0.500     0.500  key released by the KBS (audit #1, r/t/k)
    1.000     0.500  container created
    2.000     1.000  container started
total 2.000 s
`
	if out != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
	for _, want := range []string{`partial.log:1: pull_done="soon" is not an RFC 3339 time; that phase is left out`, `resolve_us="lots"`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if n := strings.Count(errOut, "\n"); n != 2 {
		t.Errorf("want 2 problems on stderr, got:\n%s", errOut)
	}
}

func TestLayersDetail(t *testing.T) {
	tests := []struct {
		line      string
		encrypted bool
		want      string
	}{
		{"fetch_us=1000 unpack_us=2000 decrypt_us=0", false, "layers fetched and unpacked (guest: fetch 0.001 s, unpack 0.002 s)"},
		{"decrypt_us=5000", false, "layers fetched, decrypted and unpacked (guest: decrypt 0.005 s incl. key)"},
		{"", true, "layers fetched, decrypted and unpacked"},
		{"", false, "layers fetched and unpacked"},
	}
	for _, tt := range tests {
		p := podStart{fields: parseLine(tt.line)}
		guest := func(k string) (d time.Duration, ok bool) { d, ok, _ = p.usField(k); return d, ok }
		if got := layersDetail(tt.encrypted, guest); got != tt.want {
			t.Errorf("%q encrypted=%v: %q, want %q", tt.line, tt.encrypted, got, tt.want)
		}
	}
}

func TestShowErrors(t *testing.T) {
	empty := writeFile(t, "empty.log", "time=x level=info msg=hello\n")
	noTimes := writeFile(t, "notimes.log", `msg="pod start timeline" container=c1 tee=snp`+"\n")
	badAudit := writeFile(t, "bad.json", `{"entries":[{"seq":1,"time":"yesterday"}]}`)
	notAudit := writeFile(t, "not.json", `{"hello":1}`)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, exitUsage, "name a command"},
		{"unknown command", []string{"graph"}, exitUsage, `unknown command "graph"`},
		{"no log", []string{"show"}, exitUsage, "--log FILE is required"},
		{"bad output", []string{"show", "--log", testLog, "--output", "xml"}, exitUsage, `--output "xml": want text, json or tsv`},
		{"bad flag", []string{"show", "--lgo", testLog}, exitUsage, "flag provided but not defined: -lgo"},
		{"stray argument", []string{"show", "--log", testLog, "extra"}, exitUsage, `unexpected argument "extra"`},
		{"tab in label", []string{"show", "--log", testLog, "--output", "tsv", "--label", "a\tb"}, exitUsage, "--label"},
		{"missing log", []string{"show", "--log", "/nonexistent/containerd.log"}, exitFailure, "open /nonexistent/containerd.log: no such file"},
		{"no timeline", []string{"show", "--log", empty}, exitFailure, `empty.log: no "pod start timeline" line in the log`},
		{"no times", []string{"show", "--log", noTimes}, exitFailure, "notimes.log:1: the timeline line of container c1 has no phase times"},
		{"bad audit", []string{"show", "--log", testLog, "--audit", badAudit}, exitFailure, "bad.json: JSON value 1:"},
		{"not audit", []string{"show", "--log", testLog, "--audit", notAudit}, exitFailure, "not.json: JSON value 1 is neither an audit page"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runT(t, "", tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d (want %d), stderr:\n%s\nwant it to contain %q", code, tt.code, errOut, tt.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"show", "-h"}, {"median", "--help"}} {
		code, out, _ := runT(t, "", args...)
		if code != exitOK || !strings.Contains(out, "Examples:\n  timeline show --log") {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
}

package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
)

// binDir holds kbs, kbsctl and cloak-aa: $CLOAK_BIN (make sets it to bin/)
// or a fresh build.
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		binDir = os.Getenv("CLOAK_BIN")
		if binDir == "" {
			dir, err := os.MkdirTemp("", "cloak-bin")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/kbs", "./cmd/kbsctl", "./cmd/cloak-aa")
			cmd.Dir = "../.."
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "build binaries:", err)
				return 1
			}
			binDir = dir
		}
		return m.Run()
	}()
	os.Exit(code)
}

// kbsProc is a kbs binary started by a test; it is stopped (by PID) when the
// test ends.
type kbsProc struct {
	cmd     *exec.Cmd
	url, ca string
	log     *bytes.Buffer
	exited  chan struct{}
}

var listenRE = regexp.MustCompile(`kbs listening on (https?://[0-9.:\[\]]+)`)

func startKBSBinary(t testing.TB, dataDir string, args ...string) *kbsProc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "kbs"), append([]string{"--listen", "127.0.0.1:0", "--data-dir", dataDir}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &kbsProc{cmd: cmd, ca: filepath.Join(dataDir, "tls", "cert.pem"), log: &bytes.Buffer{}, exited: make(chan struct{})}
	found := make(chan string, 1)
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			p.log.WriteString(line + "\n")
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() { p.stop(t) })
	select {
	case p.url = <-found:
	case <-p.exited:
		t.Fatalf("kbs exited before listening:\n%s", p.log)
	case <-time.After(30 * time.Second):
		t.Fatalf("kbs did not report its address:\n%s", p.log)
	}
	return p
}

func (p *kbsProc) stop(t testing.TB) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("kbs did not stop on SIGTERM within 10s")
	}
	if !p.cmd.ProcessState.Success() {
		t.Errorf("kbs exited with %v after SIGTERM:\n%s", p.cmd.ProcessState, p.log)
	}
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, stdin []byte, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return result{code, stdout.String(), stderr.String()}
}

func mustRun(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	r := run(t, stdin, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %v: exit %d\nstdout: %s\nstderr: %s", name, args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// TestBinariesEndToEnd drives the real kbs, kbsctl and cloak-aa binaries over
// TLS on loopback: provisioning, refusal under the default policy, release
// under an admin policy, audit, restart persistence and admin auth failures.
func TestBinariesEndToEnd(t *testing.T) {
	dir := t.TempDir()
	adminKey, adminPub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	mustRun(t, nil, "kbsctl", "keygen", "--private-key", adminKey, "--public-key", adminPub)
	if fi, err := os.Stat(adminKey); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin private key mode: %v %v", fi, err)
	}
	dataDir := filepath.Join(dir, "kbs")
	kbs := startKBSBinary(t, dataDir, "--admin-public-key", adminPub)
	if !strings.HasPrefix(kbs.url, "https://") {
		t.Fatalf("kbs serves %s, want https by default", kbs.url)
	}
	ctl := func(args ...string) []string {
		return append([]string{"--url", kbs.url, "--cacert", kbs.ca, "--admin-key", adminKey}, args...)
	}
	aa := func(args ...string) []string {
		return append([]string{"get-resource", "--kbs", kbs.url, "--kbs-cert", kbs.ca}, args...)
	}

	secret := []byte("s3cret-key-material-0123456789ab")
	mustRun(t, secret, "kbsctl", ctl("resource", "set", "default/key/e2e", "--file", "-")...)
	mustRun(t, nil, "kbsctl", ctl("reference-value", "set", "sample_svn", "1")...)

	// Default policy: refused, with the reason on stderr and exit code 1.
	r := run(t, nil, "cloak-aa", aa("kbs:///default/key/e2e")...)
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "sample") || !strings.Contains(r.stderr, "403") {
		t.Fatalf("get-resource under the default policy: exit %d stdout %q stderr %q; want exit 1 naming the sample TEE", r.code, r.stdout, r.stderr)
	}

	policyFile := filepath.Join(dir, "dev.rego")
	if err := os.WriteFile(policyFile, []byte(devPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, nil, "kbsctl", ctl("resource-policy", "set", "--file", policyFile)...)
	if got := mustRun(t, nil, "cloak-aa", aa("kbs:///default/key/e2e")...); got != string(secret) {
		t.Fatalf("released value = %q, want %q", got, secret)
	}
	// Unknown resource: 404 after the policy allowed the request.
	r = run(t, nil, "cloak-aa", aa("kbs:///default/key/missing")...)
	if r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("unknown resource: exit %d stderr %q", r.code, r.stderr)
	}

	// The audit log explains the refusal and shows the release.
	var page adminapi.AuditPage
	if err := json.Unmarshal([]byte(mustRun(t, nil, "kbsctl", ctl("audit", "--output", "json")...)), &page); err != nil {
		t.Fatalf("audit --output json: %v", err)
	}
	releases := map[string]int{}
	for _, e := range page.Entries {
		if e.Kind == adminapi.KindRelease {
			releases[e.Resource+" "+e.Verdict]++
		}
	}
	if releases["default/key/e2e deny"] != 1 || releases["default/key/e2e allow"] != 1 {
		t.Fatalf("release audit = %v, want one deny and one allow of default/key/e2e", releases)
	}
	text := mustRun(t, nil, "kbsctl", ctl("audit")...)
	if !strings.Contains(text, "DENIED") || !strings.Contains(text, "sample") {
		t.Errorf("audit text does not explain the denial:\n%s", text)
	}

	// Admin auth failures: another key, and the admin API of a KBS without keys.
	otherKey, otherPub := filepath.Join(dir, "other.key"), filepath.Join(dir, "other.pub")
	mustRun(t, nil, "kbsctl", "keygen", "--private-key", otherKey, "--public-key", otherPub)
	r = run(t, nil, "kbsctl", "--url", kbs.url, "--cacert", kbs.ca, "--admin-key", otherKey, "resource", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Errorf("admin call with another key: exit %d stderr %q, want exit 1 and 401", r.code, r.stderr)
	}

	// Restart: resources, policy, reference values and audit survive.
	kbs.stop(t)
	kbs = startKBSBinary(t, dataDir, "--admin-public-key", adminPub)
	if got := mustRun(t, nil, "cloak-aa", aa("kbs:///default/key/e2e")...); got != string(secret) {
		t.Fatalf("after restart: released value = %q", got)
	}
	var again adminapi.AuditPage
	if err := json.Unmarshal([]byte(mustRun(t, nil, "kbsctl", ctl("audit", "--output", "json", "--limit", "1000")...)), &again); err != nil {
		t.Fatal(err)
	}
	if len(again.Entries) <= len(page.Entries) || again.Entries[0].Seq != page.Entries[0].Seq {
		t.Errorf("audit after restart has %d entries starting at %d; want the %d earlier ones kept", len(again.Entries), again.Entries[0].Seq, len(page.Entries))
	}
	if out := mustRun(t, nil, "kbsctl", ctl("reference-value", "list", "--output", "json")...); !strings.Contains(out, "sample_svn") {
		t.Errorf("reference values after restart: %s", out)
	}
	kbs.stop(t)

	noAdmin := startKBSBinary(t, filepath.Join(dir, "kbs-noadmin"))
	r = run(t, nil, "kbsctl", "--url", noAdmin.url, "--cacert", noAdmin.ca, "--admin-key", adminKey, "resource", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "disabled") {
		t.Errorf("admin call to a KBS without admin keys: exit %d stderr %q, want a 'disabled' refusal", r.code, r.stderr)
	}
}

// TestKBSRefusesCorruptDatabase: a damaged data file stops the KBS with an
// error naming the file, never a panic.
func TestKBSRefusesCorruptDatabase(t *testing.T) {
	dir := t.TempDir()
	k := startKBSBinary(t, dir, "--insecure-http")
	k.stop(t)
	matches, _ := filepath.Glob(filepath.Join(dir, "*.db"))
	if len(matches) != 1 {
		t.Fatalf("want one .db file in the data dir, found %v", matches)
	}
	if err := os.WriteFile(matches[0], bytes.Repeat([]byte{0xA5}, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "kbs", "--listen", "127.0.0.1:0", "--data-dir", dir, "--insecure-http")
	if r.code == 0 || strings.Contains(r.stderr, "panic") || !strings.Contains(r.stdout+r.stderr, filepath.Base(matches[0])) {
		t.Fatalf("kbs on a corrupt database: exit %d\nstdout %s\nstderr %s\nwant a non-zero exit naming the file", r.code, r.stdout, r.stderr)
	}
}

package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/internal/version"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbs/server"
	"github.com/cloak-containers/cloak/measurements/bundle"
)

// testKBS is the real KBS server in-process behind loopback TLS, plus the
// files kbsctl needs to talk to it.
type testKBS struct {
	t                  *testing.T
	ts                 *httptest.Server
	dir                string
	cacert, key, pubPE string
}

func startKBS(t *testing.T) *testKBS {
	t.Helper()
	dir := t.TempDir()
	k := &testKBS{t: t, dir: dir, key: filepath.Join(dir, "admin.key"), pubPE: filepath.Join(dir, "admin.pub"), cacert: filepath.Join(dir, "ca.pem")}
	pub, err := adminclient.GenerateKeyFiles(k.key, k.pubPE, false)
	if err != nil {
		t.Fatal(err)
	}
	// The admin key pair, made by keygen, also signs reference-value bundles.
	srv, err := server.New(server.Config{DataDir: filepath.Join(dir, "data"), AdminKeys: []ed25519.PublicKey{pub},
		ReferenceValueSigners: []crypto.PublicKey{pub}})
	if err != nil {
		t.Fatal(err)
	}
	k.ts = httptest.NewUnstartedServer(srv.Handler())
	k.ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are part of the tests
	k.ts.StartTLS()
	t.Cleanup(func() { k.ts.Close(); srv.Close() })
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.ts.Certificate().Raw})
	if err := os.WriteFile(k.cacert, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

// run executes kbsctl with KBS_URL and KBSCTL_ADMIN_KEY set for k (nil k:
// empty environment) and --cacert prepended when k is set.
func run(t *testing.T, k *testKBS, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	env := map[string]string{}
	if k != nil {
		env["KBS_URL"] = k.ts.URL
		env["KBSCTL_ADMIN_KEY"] = k.key
		args = append([]string{"--cacert", k.cacert}, args...)
	}
	var out, errOut bytes.Buffer
	a := newApp(func(k string) string { return env[k] }, strings.NewReader(stdin), &out, &errOut)
	code = a.execute(context.Background(), args)
	return out.String(), errOut.String(), code
}

func mustRun(t *testing.T, k *testKBS, stdin string, args ...string) string {
	t.Helper()
	out, errOut, code := run(t, k, stdin, args...)
	if code != 0 {
		t.Fatalf("kbsctl %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func writeFile(t *testing.T, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResourceCommands(t *testing.T) {
	k := startKBS(t)
	secret := "s3cret\x00\xff bytes"
	out := mustRun(t, k, "", "resource", "set", "default/key/1", "--file", writeFile(t, secret))
	if out != "stored default/key/1 (14 bytes)\n" {
		t.Errorf("set output %q", out)
	}
	mustRun(t, k, "from stdin", "resource", "set", "/other/pw/db", "--file", "-")

	if got := mustRun(t, k, "", "resource", "get", "default/key/1"); got != secret {
		t.Errorf("get = %q, want the raw value %q", got, secret)
	}
	var got struct{ Path, Value string }
	if err := json.Unmarshal([]byte(mustRun(t, k, "", "-o", "json", "resource", "get", "other/pw/db")), &got); err != nil {
		t.Fatal(err)
	}
	if v, _ := base64.StdEncoding.DecodeString(got.Value); got.Path != "other/pw/db" || string(v) != "from stdin" {
		t.Errorf("json get = %+v", got)
	}

	list := mustRun(t, k, "", "resource", "list")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "PATH") || !strings.HasPrefix(lines[1], "default/key/1 ") ||
		!strings.Contains(lines[1], " 14 ") || !strings.HasPrefix(lines[2], "other/pw/db ") {
		t.Errorf("list:\n%s", list)
	}
	var rl adminapi.ResourceList
	if err := json.Unmarshal([]byte(mustRun(t, k, "", "resource", "list", "--output", "json")), &rl); err != nil {
		t.Fatal(err)
	}
	if len(rl.Resources) != 2 || rl.Resources[1].Size != len("from stdin") {
		t.Errorf("json list = %+v", rl)
	}

	if out := mustRun(t, k, "", "resource", "delete", "default/key/1"); out != "deleted default/key/1\n" {
		t.Errorf("delete output %q", out)
	}
	_, errOut, code := run(t, k, "", "resource", "get", "default/key/1")
	if code != exitFailure || !strings.Contains(errOut, "404 Not Found") || !strings.Contains(errOut, `check "unknown-resource"`) {
		t.Errorf("get after delete: exit %d, %s", code, errOut)
	}
	mustRun(t, k, "", "resource", "delete", "other/pw/db")
	if out := mustRun(t, k, "", "resource", "list"); out != "no resources stored\n" {
		t.Errorf("empty list: %q", out)
	}
	if out := mustRun(t, k, "", "-o", "json", "resource", "list"); !strings.Contains(out, `"resources": []`) {
		t.Errorf("empty json list must be [] not null: %s", out)
	}
}

const allowAll = "package policy\nimport rego.v1\ndefault allow := false\nallow if true\n"

func TestPolicyCommands(t *testing.T) {
	k := startKBS(t)
	if out := mustRun(t, k, "", "resource-policy", "get"); !strings.Contains(out, "package") {
		t.Errorf("default resource policy: %q", out)
	}
	mustRun(t, k, "", "resource-policy", "set", "--file", writeFile(t, allowAll))
	if out := mustRun(t, k, "", "resource-policy", "get"); out != allowAll {
		t.Errorf("resource policy round trip: %q", out)
	}

	var p adminclient.Policy
	if err := json.Unmarshal([]byte(mustRun(t, k, "", "-o", "json", "attestation-policy", "get")), &p); err != nil {
		t.Fatal(err)
	}
	if p.ID != "default" || p.Type != "rego" || !strings.Contains(p.Rego, "package") {
		t.Errorf("default attestation policy = %+v", p)
	}
	// Re-setting the default policy's own source must be accepted.
	mustRun(t, k, p.Rego, "attestation-policy", "set", "--id", "default", "--file", "-")

	_, errOut, code := run(t, k, "", "attestation-policy", "set", "--file", writeFile(t, "package policy\nthis is not rego"))
	if code != exitFailure || !strings.Contains(errOut, "400 Bad Request") {
		t.Errorf("invalid Rego: exit %d, %s", code, errOut)
	}
}

func TestReferenceValueCommands(t *testing.T) {
	k := startKBS(t)
	if out := mustRun(t, k, "", "reference-value", "list"); out != "no reference values set\n" {
		t.Errorf("empty list: %q", out)
	}
	if out := mustRun(t, k, "", "reference-value", "set", "sample_svn", "1", "2"); out != "sample_svn = [\"1\", \"2\"]\n" {
		t.Errorf("set output %q", out)
	}
	idata := strings.Repeat("ab", 32)
	mustRun(t, k, "", "reference-value", "set", "init_data", idata)
	out := mustRun(t, k, "", "reference-value", "list")
	if !strings.Contains(out, "init_data   [\""+idata+"\"]") || !strings.Contains(out, "sample_svn  [\"1\", \"2\"]") ||
		strings.Index(out, "init_data") > strings.Index(out, "sample_svn") {
		t.Errorf("list:\n%s", out)
	}
	var rv adminapi.ReferenceValues
	if err := json.Unmarshal([]byte(mustRun(t, k, "", "-o", "json", "reference-value", "list")), &rv); err != nil {
		t.Fatal(err)
	}
	if len(rv.ReferenceValues["sample_svn"]) != 2 {
		t.Errorf("json list = %+v", rv)
	}
	if out := mustRun(t, k, "", "reference-value", "add", "sample_svn", "3", "1"); out != "sample_svn = [\"1\", \"2\", \"3\"]\n" {
		t.Errorf("add output %q", out)
	}
	if out := mustRun(t, k, "", "reference-value", "remove", "sample_svn", "1", "3"); out != "sample_svn = [\"2\"]\n" {
		t.Errorf("remove output %q", out)
	}
	if _, errOut, code := run(t, k, "", "reference-value", "remove", "sample_svn", "9"); code != exitFailure || !strings.Contains(errOut, `has no value "9"`) {
		t.Errorf("remove absent: exit %d, %s", code, errOut)
	}
	if out := mustRun(t, k, "", "reference-value", "remove", "sample_svn", "2"); out != "deleted sample_svn (no values left)\n" {
		t.Errorf("remove last output %q", out)
	}
	mustRun(t, k, "", "reference-value", "set", "--custom", "svn", "x")
	if out := mustRun(t, k, "", "reference-value", "delete", "svn"); out != "deleted svn\n" {
		t.Errorf("delete output %q", out)
	}
	// Each mistake is refused before anything is sent (exit 2, usage).
	meas := strings.Repeat("ab", 48)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"set", "snp_launch_measurment", meas}, `did you mean "snp_launch_measurement"?`},
		{[]string{"set", "snp_launch_measurement", "nothex"}, `"nothex" is not hex`},
		{[]string{"set", "snp_launch_measurement", "abcd"}, "has 4 hex digits (2 bytes): want lowercase hex of 96 digits"},
		{[]string{"set", "snp_launch_measurement", ""}, "is empty"},
		{[]string{"set", "sample_svn"}, "kbsctl reference-value delete NAME"},
		{[]string{"add", "tdx_mr_td", strings.Repeat("ab", 32)}, "want lowercase hex of 96 digits"},
		{[]string{"set", "svn", "1"}, "--custom"},
	} {
		_, errOut, code := run(t, k, "", append([]string{"reference-value"}, c.args...)...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, %s; want %q", c.args, code, errOut, c.want)
		}
	}
	if out := mustRun(t, k, "", "reference-value", "names"); !strings.Contains(out, "snp_launch_measurement") || !strings.Contains(out, "tpm_pcr23") {
		t.Errorf("names:\n%s", out)
	}
	if out := mustRun(t, k, "", "reference-value", "list"); strings.Contains(out, "sample_svn") {
		t.Errorf("sample_svn still listed:\n%s", out)
	}
	_, errOut, code := run(t, k, "", "reference-value", "set", "Bad.Name", "1")
	if code != exitUsage || !strings.Contains(errOut, "[a-z0-9_]") {
		t.Errorf("invalid name: exit %d, %s", code, errOut)
	}
}

// attestAndFetch plays a sample-TEE guest: auth, attest with correct
// evidence, then ask for resource. It returns the release status.
func attestAndFetch(t *testing.T, k *testKBS, resource string) int {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := k.ts.Client()
	c.Jar = jar
	post := func(path string, body any) []byte {
		b, _ := json.Marshal(body)
		resp, err := c.Post(k.ts.URL+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, out)
		}
		return out
	}
	var ch kbstypes.Challenge
	json.Unmarshal(post("/kbs/v0/auth", kbstypes.Request{Version: kbstypes.ProtocolVersion, Tee: kbstypes.TeeSample, ExtraParams: json.RawMessage(`{}`)}), &ch)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk, _ := json.Marshal(jose.JSONWebKey{Key: &key.PublicKey, Algorithm: "ECDH-ES+A256KW"})
	rd, err := kbstypes.RuntimeDataDigest("", ch.Nonce, jwk)
	if err != nil {
		t.Fatal(err)
	}
	ev, _ := json.Marshal(kbstypes.SampleEvidence{SVN: "1", ReportData: base64.StdEncoding.EncodeToString(rd)})
	post("/kbs/v0/attest", kbstypes.Attestation{
		RuntimeData: kbstypes.RuntimeData{Nonce: ch.Nonce, TeePubKey: jwk},
		TeeEvidence: kbstypes.TeeEvidence{PrimaryEvidence: ev},
	})
	resp, err := c.Get(k.ts.URL + adminapi.PathResource + resource)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestAuditExplainsDecisions(t *testing.T) {
	k := startKBS(t)
	mustRun(t, k, "", "resource", "set", "default/key/1", "--file", writeFile(t, "plaintext-of-key-1"))
	mustRun(t, k, "", "reference-value", "set", "sample_svn", "2")
	if st := attestAndFetch(t, k, "default/key/1"); st != http.StatusForbidden {
		t.Fatalf("default policy released a key to the sample TEE: %d", st)
	}

	// The two admin changes come first; --kind admin shows only them.
	out := mustRun(t, k, "", "audit", "--kind", "admin")
	admin := strings.Split(strings.TrimSpace(out), "\n\n")
	if len(admin) != 2 || !strings.HasPrefix(admin[0], "#1 ") || !strings.Contains(admin[0], "resource.set of default/key/1 by admin key ") ||
		!strings.HasPrefix(admin[1], "#2 ") || !strings.Contains(admin[1], "reference-value.set of sample_svn") {
		t.Fatalf("want the 2 admin changes, got:\n%s", out)
	}
	if strings.Contains(out, "plaintext-of-key-1") {
		t.Fatalf("the audit shows a resource value:\n%s", out)
	}
	var adminPage struct {
		Entries []explainedEntry `json:"entries"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, k, "", "-o", "json", "audit", "--kind", "admin")), &adminPage); err != nil {
		t.Fatal(err)
	}
	if len(adminPage.Entries) != 2 || adminPage.Entries[0].Action != adminapi.ActionResourceSet || adminPage.Entries[0].Digest == "" {
		t.Errorf("json audit --kind admin = %+v", adminPage)
	}

	out = mustRun(t, k, "", "audit", "--after", "2")
	paragraphs := strings.Split(strings.TrimSpace(out), "\n\n")
	if len(paragraphs) != 2 {
		t.Fatalf("want 2 audit paragraphs, got:\n%s", out)
	}
	if !strings.HasPrefix(paragraphs[0], "#3 ") || !strings.Contains(paragraphs[0], "Attestation of session ") ||
		!strings.Contains(paragraphs[0], "(sample TEE)") {
		t.Errorf("attest paragraph:\n%s", paragraphs[0])
	}
	if !strings.HasPrefix(paragraphs[1], "#4 ") ||
		!strings.Contains(paragraphs[1], "Release of default/key/1 to session ") ||
		!strings.Contains(paragraphs[1], "was DENIED by the resource policy") {
		t.Errorf("release paragraph:\n%s", paragraphs[1])
	}
	// The sample TEE's svn 1 is not the reference value 2: both the
	// attestation and the denial it led to must say so claim by claim.
	for i, p := range paragraphs {
		if !strings.Contains(p, `sample.svn "1" is not among`) || !strings.Contains(p, "hardware = 97") {
			t.Errorf("paragraph %d does not explain the failed claims:\n%s", i, p)
		}
	}

	var page struct {
		Entries []explainedEntry `json:"entries"`
		Next    uint64           `json:"next"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, k, "", "-o", "json", "audit", "--after", "3", "--limit", "5")), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 1 || page.Next != 4 || page.Entries[0].Kind != adminapi.KindRelease ||
		page.Entries[0].Verdict != "deny" || !strings.HasPrefix(page.Entries[0].Explanation, "Release of default/key/1") {
		t.Errorf("json audit after 3 = %+v", page)
	}
	if out := mustRun(t, k, "", "audit", "--after", "4"); out != "no audit entries after #4\n" {
		t.Errorf("empty audit: %q", out)
	}
	// An auditor may read the audit log.
	mustRun(t, k, "", "--role", "auditor", "audit", "--kind", "release")
}

// syncBuffer lets the test read what a running command has written so far.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestAuditFollow(t *testing.T) {
	k := startKBS(t)
	mustRun(t, k, "", "resource-policy", "set", "--file", writeFile(t, allowAll))
	mustRun(t, k, "", "resource", "set", "default/key/1", "--file", writeFile(t, "k"))

	var out, errOut syncBuffer
	env := map[string]string{"KBS_URL": k.ts.URL, "KBSCTL_ADMIN_KEY": k.key}
	a := newApp(func(k string) string { return env[k] }, strings.NewReader(""), &out, &errOut)
	a.poll = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- a.execute(ctx, []string{"--cacert", k.cacert, "-o", "json", "audit", "--follow", "--after", "2"})
	}()

	if st := attestAndFetch(t, k, "default/key/1"); st != http.StatusOK {
		t.Fatalf("allow-all policy refused: %d", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "\n") < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("follow ended with %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 JSON lines, got:\n%s", out.String())
	}
	var e explainedEntry
	if err := json.Unmarshal([]byte(lines[1]), &e); err != nil {
		t.Fatal(err)
	}
	if e.Seq != 4 || e.Verdict != "allow" || !strings.Contains(e.Explanation, "was ALLOWED") {
		t.Errorf("second entry = %+v", e)
	}
}

func TestExitCodesAndHints(t *testing.T) {
	k := startKBS(t)
	otherKey := filepath.Join(t.TempDir(), "other.key")
	if _, err := adminclient.GenerateKeyFiles(otherKey, otherKey+".pub", false); err != nil {
		t.Fatal(err)
	}
	// A listener closed at once leaves a loopback port nobody answers on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "https://" + l.Addr().String()
	l.Close()
	hang := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer hang.Close()
	hangCA := writeFile(t, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hang.Certificate().Raw})))

	tests := []struct {
		name     string
		kbs      *testKBS
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no URL", nil, []string{"--admin-key", k.key, "resource", "list"}, exitUsage, "no KBS URL"},
		{"no admin key", nil, []string{"--url", k.ts.URL, "resource", "list"}, exitUsage, "no admin key"},
		{"bad output", k, []string{"-o", "yaml", "resource", "list"}, exitUsage, `--output "yaml"`},
		{"bad flag", k, []string{"resource", "list", "--bogus"}, exitUsage, "unknown flag"},
		{"unknown command", k, []string{"resources"}, exitUsage, "unknown command"},
		{"unknown subcommand", k, []string{"resource", "frob"}, exitUsage, "unknown command"},
		{"extra argument", k, []string{"resource", "list", "x"}, exitUsage, "unknown command"},
		{"group without subcommand takes no argument", k, []string{"reference-value", "x"}, exitUsage, `unknown command "x" for "kbsctl reference-value"`},
		{"missing argument", k, []string{"resource", "get"}, exitUsage, "accepts 1 arg"},
		{"bad resource path", k, []string{"resource", "get", "a/b"}, exitUsage, "three segments"},
		{"missing --file", k, []string{"resource", "set", "a/b/c"}, exitUsage, "--file is required"},
		{"bad URL", nil, []string{"--url", "127.0.0.1:1", "--admin-key", k.key, "resource", "list"}, exitUsage, "want https://HOST:PORT"},
		{"CA file without a certificate", nil, []string{"--url", k.ts.URL, "--admin-key", k.key, "--cacert", k.key, "resource", "list"},
			exitUsage, "holds no PEM certificate"},
		{"negative limit", k, []string{"audit", "--limit", "-1"}, exitUsage, "--limit"},
		{"unknown audit kind", k, []string{"audit", "--kind", "admni"}, exitUsage, "want admin, attest or release"},
		{"missing key file", k, []string{"--admin-key", "/nonexistent/admin.key", "resource", "list"}, exitFailure, "kbsctl keygen"},
		{"public key as admin key", k, []string{"--admin-key", k.pubPE, "resource", "list"}, exitFailure, `want a PEM "PRIVATE KEY" block`},
		{"wrong admin key", k, []string{"--admin-key", otherKey, "resource", "list"}, exitFailure,
			"admin key not accepted: is the KBS started with --admin-public-key matching it?"},
		{"auditor writes", k, []string{"--role", "auditor", "resource", "set", "a/b/c", "--file", "-"}, exitFailure, "needs the admin role"},
		{"unknown CA", nil, []string{"--url", k.ts.URL, "--admin-key", k.key, "resource", "list"}, exitFailure, "pass --cacert DATA_DIR/tls/cert.pem"},
		{"unreachable", nil, []string{"--url", deadURL, "--admin-key", k.key, "resource", "list"}, exitFailure, "KBS unreachable at " + deadURL},
		{"timeout", nil, []string{"--url", hang.URL, "--cacert", hangCA, "--admin-key", k.key, "--timeout", "100ms", "resource", "list"},
			exitFailure, "no answer within --timeout 100ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, tc.kbs, "", tc.args...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit %d and %q", code, errOut, tc.wantCode, tc.wantErr)
			}
			if out != "" {
				t.Errorf("a failed command wrote to stdout: %q", out)
			}
		})
	}
}

func TestKeygenCommand(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "a.key"), filepath.Join(dir, "a.pub")
	out := mustRun(t, nil, "", "keygen", "--private-key", priv, "--public-key", pub)
	if !strings.Contains(out, "--admin-public-key "+pub) {
		t.Errorf("keygen output %q", out)
	}
	if fi, err := os.Stat(priv); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v %v", fi, err)
	}
	first, _ := os.ReadFile(priv)
	_, errOut, code := run(t, nil, "", "keygen", "--private-key", priv, "--public-key", pub)
	if code != exitFailure || !strings.Contains(errOut, "already exists; pass --force") {
		t.Errorf("overwrite without --force: exit %d, %s", code, errOut)
	}
	if again, _ := os.ReadFile(priv); !bytes.Equal(again, first) {
		t.Error("refused keygen changed the key")
	}
	var paths map[string]string
	if err := json.Unmarshal([]byte(mustRun(t, nil, "", "-o", "json", "keygen", "--private-key", priv, "--public-key", pub, "--force")), &paths); err != nil {
		t.Fatal(err)
	}
	if paths["private_key"] != priv || paths["public_key"] != pub {
		t.Errorf("json keygen = %v", paths)
	}
	if again, _ := os.ReadFile(priv); bytes.Equal(again, first) {
		t.Error("--force did not replace the key")
	}
	if _, _, code := run(t, nil, "", "keygen", "--private-key", priv); code != exitUsage {
		t.Errorf("keygen without --public-key: exit %d, want %d", code, exitUsage)
	}
}

func TestKeyproviderServeCommand(t *testing.T) {
	dir, err := os.MkdirTemp("", "kp") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "kp.sock")
	var errOut syncBuffer
	a := newApp(func(string) string { return "" }, strings.NewReader(""), io.Discard, &errOut)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- a.execute(ctx, []string{"keyprovider", "serve", "--socket", sock, "--log-format", "json"})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("socket never came up: %s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("serve exited %d: %s", code, errOut.String())
	}
	var rec struct{ Level, Msg, Socket string }
	line, _, _ := strings.Cut(errOut.String(), "\n")
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Level != "INFO" || rec.Socket != "unix://"+sock {
		t.Errorf("with --log-format json, first line %q (%v), want a JSON line naming the socket", line, err)
	}
	for _, bad := range [][]string{{"--log-level", "loud"}, {"--log-format", "xml"}} {
		_, errText, code := run(t, nil, "", append([]string{"keyprovider", "serve", "--socket", sock}, bad...)...)
		if code != exitUsage || !strings.Contains(errText, bad[0]+" \""+bad[1]+"\": want ") {
			t.Errorf("serve %v: exit %d, stderr %q; want a usage error naming the value", bad, code, errText)
		}
	}
	if _, _, code := run(t, nil, "", "keyprovider", "serve"); code != exitUsage {
		t.Errorf("serve without --socket: exit %d, want %d", code, exitUsage)
	}
}

func TestTokenCommand(t *testing.T) {
	k := startKBS(t)
	tok := strings.TrimSpace(mustRun(t, k, "", "token"))
	req, _ := http.NewRequest("GET", k.ts.URL+adminapi.PathResources, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := k.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the KBS refused the printed token: %d", resp.StatusCode)
	}
	if _, _, code := run(t, nil, "", "token"); code != exitUsage {
		t.Errorf("token without --admin-key: exit %d, want %d", code, exitUsage)
	}
}

// TestHelp checks every command documents itself with a runnable example.
func TestHelp(t *testing.T) {
	root := newApp(func(string) string { return "" }, nil, io.Discard, io.Discard).rootCmd()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && c.Example == "" && c.Name() != "help" && !strings.Contains(c.CommandPath(), "completion") {
			t.Errorf("%s has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if out, _, code := run(t, nil, "", "resource"); code != exitOK || !strings.Contains(out, "Available Commands") {
		t.Errorf("bare group command: exit %d\n%s", code, out)
	}
	out, _, code := run(t, nil, "", "audit", "--help")
	if code != exitOK || !strings.Contains(out, "kbsctl audit --follow") {
		t.Errorf("audit --help: exit %d\n%s", code, out)
	}
}

func TestReferenceValueImport(t *testing.T) {
	k := startKBS(t)
	key, err := bundle.LoadSigner(k.key)
	if err != nil {
		t.Fatal(err)
	}
	meas := strings.Repeat("5a", 48)
	signed, err := bundle.Sign(bundle.Document{Name: "img", Image: bundle.Image{Cmdline: "c"},
		Values: []bundle.Value{{Name: "snp_launch_measurement", Value: meas, Config: bundle.Config{TEE: "snp", VCPUs: 2, CPUType: "EPYC-Genoa"}}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(signed)
	tampered[bytes.Index(tampered, []byte(meas))] = '6'
	_, errOut, code := run(t, k, "", "reference-value", "import", "--file", writeFile(t, string(tampered)))
	if code != exitFailure || !strings.Contains(errOut, "signature does not verify") {
		t.Fatalf("tampered: exit %d: %s", code, errOut)
	}
	if out := mustRun(t, k, "", "reference-value", "list"); out != "no reference values set\n" {
		t.Fatalf("tampered bundle stored something: %q", out)
	}
	out := mustRun(t, k, string(signed), "reference-value", "import", "--file", "-")
	if !strings.HasPrefix(out, "imported bundle sha256:") || !strings.Contains(out, "snp_launch_measurement "+meas+" (new)") {
		t.Fatalf("import output %q", out)
	}
	if out := mustRun(t, k, "", "reference-value", "list"); !strings.Contains(out, meas) || !strings.Contains(out, "snp_launch_measurement: 1 value(s) from bundle sha256:") {
		t.Fatalf("list after import: %q", out)
	}
	if _, errOut, code := run(t, k, "", "reference-value", "import"); code != exitUsage || !strings.Contains(errOut, "--file is required") {
		t.Fatalf("no --file: exit %d: %s", code, errOut)
	}
	// The bundle also imports as FILE.
	if out := mustRun(t, k, "", "reference-value", "import", writeFile(t, string(signed))); !strings.Contains(out, "(already stored)") {
		t.Fatalf("import FILE output %q", out)
	}

	// A JSON file: every value checked before the first request.
	pcr := strings.Repeat("0c", 32)
	bad := writeFile(t, `{"tpm_pcr07":["`+pcr+`"],"snp_launch_measurment":["`+meas+`"]}`)
	if _, errOut, code := run(t, k, "", "reference-value", "import", bad); code != exitUsage || !strings.Contains(errOut, `did you mean "snp_launch_measurement"`) {
		t.Fatalf("bad JSON import: exit %d: %s", code, errOut)
	}
	if out := mustRun(t, k, "", "reference-value", "list"); strings.Contains(out, "tpm_pcr07") {
		t.Fatalf("a refused file stored something:\n%s", out)
	}
	other := strings.Repeat("6b", 48)
	out = mustRun(t, k, "", "reference-value", "import", writeFile(t, `{"tpm_pcr07":["`+pcr+`"],"snp_launch_measurement":["`+other+`"]}`))
	if !strings.Contains(out, `snp_launch_measurement = ["`+meas+`", "`+other+`"]`) || !strings.Contains(out, `tpm_pcr07 = ["`+pcr+`"]`) {
		t.Fatalf("JSON import output %q", out)
	}
	mustRun(t, k, "", "reference-value", "import", "--custom", writeFile(t, `{"svn":["1"]}`))
}

// TestCommandLine: an unknown flag names itself and the usage (exit 2);
// --version prints the stamped version (exit 0) without a KBS.
func TestCommandLine(t *testing.T) {
	stdout, stderr, code := run(t, nil, "", "--bogus")
	if code != exitUsage || stdout != "" || stderr != "kbsctl: unknown flag: --bogus\n  run 'kbsctl --help' for usage\n" {
		t.Errorf("--bogus: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, stderr, code = run(t, nil, "", "--version")
	if code != exitOK || stdout != "kbsctl version "+version.String()+"\n" || stderr != "" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestJSONErrors: with -o json a failure is one JSON object on stdout,
// {"error", "hint"}, and nothing on stderr; the exit code is as in text.
func TestJSONErrors(t *testing.T) {
	k := startKBS(t)
	tests := []struct {
		name string
		args []string
		code int
		hint string // "": no hint key
	}{
		{"unknown flag", []string{"resource", "list", "--bogus", "-o", "json"}, exitUsage, "run 'kbsctl --help' for usage"},
		{"refused before the command runs", []string{"-o", "json", "--timeout", "0", "resource", "list"}, exitUsage, "run 'kbsctl --help' for usage"},
		{"refused by the KBS", []string{"-o", "json", "resource", "get", "default/key/missing"}, exitFailure, ""},
		{"unreachable", []string{"-o", "json", "--url", "https://127.0.0.1:1", "resource", "list"}, exitFailure, "KBS unreachable at https://127.0.0.1:1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, k, "", tc.args...)
			obj := testutil.OneJSONObject(t, out)
			msg, _ := obj["error"].(string)
			hint, hasHint := obj["hint"].(string)
			if code != tc.code || errOut != "" || msg == "" || !strings.HasPrefix(hint, tc.hint) || hasHint != (tc.hint != "") {
				t.Errorf("exit %d (want %d), stdout %s, stderr %q; want error and hint %q", code, tc.code, out, errOut, tc.hint)
			}
		})
	}
}

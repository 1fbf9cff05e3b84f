package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/kbs/adminauth"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbs/server"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// kbsBinary builds cmd/kbs once per test run.
func kbsBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "kbs-bin-"); buildErr != nil {
			return
		}
		if out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, "kbs"), ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "kbs")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// logRecords collects the JSON log lines of a kbs process.
type logRecords struct {
	mu      sync.Mutex
	records []map[string]any
	next    int // first record waitFor has not consumed
	changed chan struct{}
}

func (l *logRecords) add(line string) {
	var rec map[string]any
	if json.Unmarshal([]byte(line), &rec) != nil {
		rec = map[string]any{"msg": "(not JSON) " + line}
	}
	l.mu.Lock()
	l.records = append(l.records, rec)
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// waitFor returns the records from the last one consumed up to the first
// whose msg is msg, and consumes them.
func (l *logRecords) waitFor(t *testing.T, msg string) []map[string]any {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		l.mu.Lock()
		for i := l.next; i < len(l.records); i++ {
			if l.records[i]["msg"] == msg {
				out := l.records[l.next : i+1]
				l.next = i + 1
				l.mu.Unlock()
				return out
			}
		}
		l.mu.Unlock()
		select {
		case <-l.changed:
		case <-deadline:
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("no log record %q within 20s; records since the last wait: %v", msg, l.records[l.next:])
		}
	}
}

func findRecord(recs []map[string]any, match func(map[string]any) bool) map[string]any {
	for _, r := range recs {
		if match(r) {
			return r
		}
	}
	return nil
}

// strs is a JSON list of strings as []string.
func strs(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, e := range list {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}

// TestReloadOnSIGHUP runs the kbs binary from a config file, edits the file
// and sends SIGHUP: an added auditor key authenticates read-only, a removed
// admin key is refused, the log says which fingerprints changed per role
// and that a changed session-ttl needs a restart; a broken file and a file
// naming a missing key leave the previous keys in force.
func TestReloadOnSIGHUP(t *testing.T) {
	bin := kbsBinary(t)
	dir := t.TempDir()
	type key struct {
		file string
		pub  ed25519.PublicKey
		priv ed25519.PrivateKey
	}
	keys := map[string]key{}
	for _, name := range []string{"alice", "bob", "carol"} {
		pubFile := filepath.Join(dir, name+".pub")
		pub, err := adminclient.GenerateKeyFiles(filepath.Join(dir, name+".key"), pubFile, false)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := adminclient.LoadPrivateKey(filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = key{pubFile, pub, priv}
	}
	conf := filepath.Join(dir, "kbs.toml")
	writeConf := func(text string) {
		t.Helper()
		// Replaced by rename, as editors and configuration managers do.
		if err := os.WriteFile(conf+".new", []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(conf+".new", conf); err != nil {
			t.Fatal(err)
		}
	}
	common := fmt.Sprintf("data-dir = %q\nlisten = \"256.0.0.1:0\"  # overridden on the command line\ninsecure-http = true\nlog-format = \"json\"\n", filepath.Join(dir, "data"))
	writeConf(common + fmt.Sprintf("admin-public-key = [%q, %q]\n", keys["alice"].file, keys["bob"].file))

	cmd := exec.Command(bin, "--config", conf, "--listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	logs := &logRecords{changed: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			logs.add(sc.Text())
		}
		exited <- cmd.Wait()
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("no ready line: %v", err)
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "kbs listening on ")
	if !ok || !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("ready line %q", line)
	}
	start := logs.waitFor(t, "kbs ready")
	if r := findRecord(start, func(r map[string]any) bool { return strings.HasPrefix(r["msg"].(string), "the command line overrides") }); r == nil || !slices.Equal(strs(r["keys"]), []string{"listen"}) {
		t.Errorf("no start-up record of the overridden listen key: %v", start)
	}
	// data-dir, insecure-http, log-format, admin-public-key; not listen.
	if r := findRecord(start, func(r map[string]any) bool { return strings.HasPrefix(r["msg"].(string), "configuration file loaded") }); r == nil || r["file"] != conf || r["keys_applied"] != 4.0 {
		t.Errorf("no start-up record of the file with 4 keys applied: %v", start)
	}

	ctx := t.Context()
	client := func(name string) *adminclient.Client {
		c, err := adminclient.New(url, keys[name].priv)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// expect checks an admin call: want "" for success, else the problem's
	// status and check ("401 admin-token-signature").
	expect := func(what string, err error, want string) {
		t.Helper()
		var ae *adminclient.Error
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v, want success", what, err)
		case want == "":
		case !errors.As(err, &ae):
			t.Errorf("%s: %v, want %s", what, err, want)
		case fmt.Sprintf("%d %s", ae.Problem.Status, ae.Problem.Check) != want:
			t.Errorf("%s: %v, want %s", what, err, want)
		}
	}
	write := func(name string) error {
		_, err := client(name).SetResource(ctx, "default/key/"+name, []byte("value of "+name))
		return err
	}
	read := func(name string) error {
		_, err := client(name).ListResources(ctx)
		return err
	}
	expect("alice writes before the reload", write("alice"), "")
	expect("carol reads before she is added", read("carol"), "401 admin-token-signature")

	// Alice leaves, carol becomes an auditor, session-ttl changes.
	writeConf(common + fmt.Sprintf("admin-public-key = [%q]\nauditor-public-key = [%q]\nsession-ttl = \"7m\"\n", keys["bob"].file, keys["carol"].file))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	recs := logs.waitFor(t, "configuration reloaded")
	fp := func(name string) string { return adminauth.Fingerprint(keys[name].pub) }
	roleChange := func(role string) map[string]any {
		return findRecord(recs, func(r map[string]any) bool { return r["msg"] == "admin keys changed" && r["role"] == role })
	}
	if r := roleChange("admin"); r == nil || len(strs(r["added"])) != 0 || !slices.Equal(strs(r["removed"]), []string{fp("alice")}) {
		t.Errorf("admin role change %v, want alice %s removed", r, fp("alice"))
	}
	if r := roleChange("auditor"); r == nil || !slices.Equal(strs(r["added"]), []string{fp("carol")}) || len(strs(r["removed"])) != 0 {
		t.Errorf("auditor role change %v, want carol %s added", r, fp("carol"))
	}
	if r := findRecord(recs, func(r map[string]any) bool { return r["key"] == "session-ttl" }); r == nil || r["level"] != "WARN" ||
		!strings.Contains(r["msg"].(string), "restart") || r["running"] != "5m0s" || r["configured"] != "7m0s" {
		t.Errorf("no restart warning for session-ttl: %v", recs)
	}
	if r := findRecord(recs, func(r map[string]any) bool { return r["key"] == "listen" }); r != nil {
		t.Errorf("the overridden listen key is reported as changed: %v", r)
	}
	expect("alice writes after her key was removed", write("alice"), "401 admin-token-signature")
	expect("alice reads after her key was removed", read("alice"), "401 admin-token-signature")
	expect("carol reads as an auditor", read("carol"), "")
	expect("carol writes as an auditor", write("carol"), "403 admin-role")
	expect("bob writes", write("bob"), "")

	// Broken files change nothing.
	for _, bad := range []struct{ name, text, reason string }{
		{"unknown key", common + fmt.Sprintf("admin-public-key = [%q, %q]\nauditor_public_key = []\n", keys["alice"].file, keys["bob"].file), `unknown key "auditor_public_key"; did you mean "auditor-public-key"?`},
		{"missing key file", common + fmt.Sprintf("admin-public-key = [%q]\n", filepath.Join(dir, "nobody.pub")), "admin-public-key: open " + filepath.Join(dir, "nobody.pub")},
		{"not TOML", "admin-public-key = [\n", "line 1, column 21: array is incomplete"},
	} {
		writeConf(bad.text)
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		recs := logs.waitFor(t, "configuration reload refused; the previous settings stay in force")
		last := recs[len(recs)-1]
		if e, _ := last["error"].(string); !strings.Contains(e, bad.reason) || last["level"] != "ERROR" {
			t.Errorf("%s: refusal %v, want an error containing %q", bad.name, last, bad.reason)
		}
		expect(bad.name+": bob still writes", write("bob"), "")
		expect(bad.name+": carol still reads", read("carol"), "")
		expect(bad.name+": alice still refused", read("alice"), "401 admin-token-signature")
	}

	// No key at all: the admin API is off, as at a start without keys.
	writeConf(common)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	recs = logs.waitFor(t, "configuration reloaded")
	if findRecord(recs, func(r map[string]any) bool {
		return strings.HasPrefix(r["msg"].(string), "no admin or auditor key left")
	}) == nil {
		t.Errorf("no warning that the admin API is disabled: %v", recs)
	}
	expect("bob after all keys were removed", write("bob"), "403 admin-disabled")

	stopped = true
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("kbs did not stop after SIGTERM")
	}
}

// TestReloadWithoutConfigFile: without --config, a reload re-reads the key
// files named on the command line, so a key file replaced in place takes
// effect (in process, with the real server behind httptest).
func TestReloadWithoutConfigFile(t *testing.T) {
	dir := t.TempDir()
	pubFile := filepath.Join(dir, "admin.pub")
	old, err := adminclient.GenerateKeyFiles(filepath.Join(dir, "old.key"), pubFile, false)
	if err != nil {
		t.Fatal(err)
	}
	fs := newCommand().Flags()
	if err := fs.Parse([]string{"--data-dir", dir, "--admin-public-key", pubFile}); err != nil {
		t.Fatal(err)
	}
	c := &configFile{}
	if err := c.load(fs); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{DataDir: filepath.Join(dir, "data"), AdminKeys: []ed25519.PublicKey{old}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	list := func(keyFile string) error {
		priv, err := adminclient.LoadPrivateKey(filepath.Join(dir, keyFile))
		if err != nil {
			t.Fatal(err)
		}
		cl, err := adminclient.New(hs.URL, priv)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cl.ListResources(t.Context())
		return err
	}
	if err := list("old.key"); err != nil {
		t.Fatalf("old key before the reload: %v", err)
	}
	neu, err := adminclient.GenerateKeyFiles(filepath.Join(dir, "new.key"), pubFile, true)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	c.reload(slog.New(slog.NewJSONHandler(&logBuf, nil)), srv)
	if err := list("new.key"); err != nil {
		t.Errorf("new key after the reload: %v", err)
	}
	if err := list("old.key"); err == nil {
		t.Error("old key still accepted after the reload")
	}
	want := fmt.Sprintf(`"msg":"admin keys changed","role":"admin","added":[%q],"removed":[%q]}`, adminauth.Fingerprint(neu), adminauth.Fingerprint(old))
	if !strings.Contains(logBuf.String(), want) || !strings.Contains(logBuf.String(), `"msg":"configuration reloaded","file":""`) {
		t.Fatalf("log:\n%s\nwant %s", logBuf.String(), want)
	}
}

package server

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/kbs/store/pgtest"
)

// buildKBS builds cmd/kbs into a temporary directory.
func buildKBS(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "kbs")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/cloak-containers/cloak/cmd/kbs")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/kbs: %v\n%s", err, b)
	}
	return out
}

// kbsProcess is a kbs binary serving plain HTTP on loopback.
type kbsProcess struct {
	cmd  *exec.Cmd
	base string
	done chan struct{}
}

func startKBSProcess(t testing.TB, bin string, args ...string) *kbsProcess {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "kbs.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"--listen", "127.0.0.1:0", "--log-level", "warn"}, args...)...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &kbsProcess{cmd: cmd, done: make(chan struct{})}
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID; a no-op once it has exited
		<-p.done
		logf.Close()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if addr, ok := strings.CutPrefix(sc.Text(), "kbs listening on "); ok {
				lines <- addr
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() { cmd.Wait(); close(p.done) }()
	select {
	case p.base = <-lines:
	case <-p.done:
		log, _ := os.ReadFile(logf.Name())
		t.Fatalf("kbs exited before listening:\n%s", log)
	case <-time.After(30 * time.Second):
		t.Fatal("kbs did not print its address within 30 s")
	}
	return p
}

// adminClient calls the admin API of any replica with tokens of one key.
type adminClient struct {
	k  *kbs              // for adminToken only
	tr http.RoundTripper // nil: http.DefaultTransport
}

func (a adminClient) do(base, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.k.adminToken(a.k.admin, adminapi.RoleAdmin, -time.Second, time.Minute))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c := &http.Client{Timeout: 20 * time.Second, Transport: a.tr}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

// Three kbs processes on one PostgreSQL, a load of guests spreading their
// steps over them, and kill -9 of one replica in the middle: every guest
// that retries succeeds, no acknowledged resource write or attestation is
// lost, and no nonce is accepted twice.
func TestReplicaKill9UnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/kbs and runs three processes; not with -short")
	}
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	bin := buildKBS(t)
	dir := t.TempDir()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	pubFile := filepath.Join(dir, "admin.pub")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	var procs []*kbsProcess
	var bases []string
	for range 3 {
		// One after the other: the first creates storage.key and
		// token-key.pem, which the others share (a Secret in a cluster).
		p := startKBSProcess(t, bin, "--insecure-http", "--data-dir", data, "--storage", url, "--admin-public-key", pubFile)
		procs, bases = append(procs, p), append(bases, p.base)
	}
	admin := adminClient{k: &kbs{t: t, admin: priv, now: time.Now()}}
	mustAdmin := func(base, method, path string, body []byte) []byte {
		st, b, err := admin.do(base, method, path, body)
		if err != nil || st/100 != 2 {
			t.Fatalf("%s %s at %s: %d %s %v", method, path, base, st, b, err)
		}
		return b
	}
	mustAdmin(bases[0], "POST", adminapi.PathResource+"default/key/one", []byte("cluster-secret"))
	mustAdmin(bases[0], "POST", adminapi.PathResourcePolicy, policyBody(allowAll))
	time.Sleep(time.Second) // the policy is in force everywhere within 1 s

	type result struct {
		g     *loadGuest
		token string
		body  []byte
		err   error
		tries int
	}
	const guests, parallel, maxTries = 60, 6, 8
	var reasonsMu sync.Mutex
	reasons := map[string]int{} // why guests retried
	results := make(chan result, guests)
	var finished atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)

	// Admin writes run beside the load; each acknowledged one must survive.
	var ackedMu sync.Mutex
	acked := map[string]string{}
	stopWrites := make(chan struct{})
	writesDone := make(chan struct{})
	go func() {
		defer close(writesDone)
		for i := 0; ; i++ {
			select {
			case <-stopWrites:
				return
			default:
			}
			path, value := fmt.Sprintf("default/ack/%d", i), fmt.Sprintf("value-%d", i)
			st, _, err := admin.do(bases[mrand.IntN(3)], "POST", adminapi.PathResource+path, []byte(value))
			if err == nil && st == 200 {
				ackedMu.Lock()
				acked[path] = value
				ackedMu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	killed := make(chan struct{})
	go func() {
		for finished.Load() < guests/4 {
			time.Sleep(10 * time.Millisecond)
		}
		procs[2].cmd.Process.Kill() // SIGKILL, by PID
		<-procs[2].done
		close(killed)
	}()
	for range guests {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem; finished.Add(1) }()
			var r result
			// Like a client behind a load balancer, a guest retries on
			// the replicas that have not failed it.
			candidates := slices.Clone(bases)
			for r.tries = 1; r.tries <= maxTries; r.tries++ {
				r.g = newLoadGuest(t, nil)
				var v []byte
				r.token, r.body, v, r.err = r.g.handshake(candidates, "default/key/one")
				var se *stepError
				if _, isStatus := errorsAs(r.err); errors.As(r.err, &se) && !isStatus && len(candidates) > 1 {
					candidates = slices.DeleteFunc(candidates, func(b string) bool { return b == se.base })
				}
				if r.err == nil && string(v) != "cluster-secret" {
					r.err = fmt.Errorf("resource value %q", v)
				}
				if r.err == nil {
					break
				}
				reasonsMu.Lock()
				reasons[retryReason(r.err)]++
				reasonsMu.Unlock()
				time.Sleep(time.Duration(50*r.tries) * time.Millisecond)
			}
			results <- r
		}()
	}
	wg.Wait()
	close(results)
	close(stopWrites)
	<-writesDone
	select {
	case <-killed:
	default:
		t.Fatal("the load finished before the replica was killed")
	}

	live := bases[:2]
	retried := 0
	var tokens []string
	for r := range results {
		if r.err != nil {
			t.Errorf("guest failed after %d tries: %v", r.tries-1, r.err)
			continue
		}
		if r.tries > 1 {
			retried++
		}
		tokens = append(tokens, r.token)
		// No nonce is accepted twice, at any live replica.
		for _, b := range live {
			_, err := r.g.attest(b, r.body)
			if se, ok := errorsAs(err); !ok || se.status != 401 {
				t.Errorf("replayed attestation at %s: %v, want 401", b, err)
			}
		}
	}
	t.Logf("%d guests succeeded, %d of them after retrying (%v); %d admin writes acknowledged", len(tokens), retried, reasons, len(acked))

	// Nothing acknowledged is lost.
	for path, value := range acked {
		if got := mustAdmin(live[1], "GET", adminapi.PathAdminResource+path, nil); string(got) != value {
			t.Errorf("acknowledged resource %s = %q, want %q", path, got, value)
		}
	}
	ids := map[string]bool{}
	for after := uint64(0); ; {
		var page adminapi.AuditPage
		if err := json.Unmarshal(mustAdmin(live[0], "GET", fmt.Sprintf("%s?after=%d&limit=1000&kind=attest", adminapi.PathAudit, after), nil), &page); err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Entries {
			ids[e.TokenID] = true
		}
		if len(page.Entries) == 0 || page.Next == after {
			break
		}
		after = page.Next
	}
	for _, tok := range tokens {
		if !ids[jtiOf(t, tok)] {
			t.Errorf("token %s was issued but its attestation is not in the audit log", jtiOf(t, tok))
		}
	}
	if len(acked) == 0 {
		t.Error("no admin write was acknowledged during the load")
	}
}

// retryReason classifies a failed handshake for the test log.
func retryReason(err error) string {
	if se, ok := errorsAs(err); ok {
		return fmt.Sprintf("%d %s", se.status, se.check)
	}
	if strings.Contains(err.Error(), "connection refused") {
		return "connection refused"
	}
	return "transport error"
}

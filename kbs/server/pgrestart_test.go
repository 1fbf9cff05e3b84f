package server

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/kbs/store/pgtest"
)

// jtiOf returns the token id of an EAR token (unverified: test only).
func jtiOf(t *testing.T, tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWS", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		JTI string `json:"jti"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.JTI == "" {
		t.Fatalf("token claims %s: %v", raw, err)
	}
	return c.JTI
}

// auditTokenIDs returns the token ids of every attest entry in k's log.
func auditTokenIDs(k *kbs) map[string]bool {
	ids := map[string]bool{}
	after := uint64(0)
	for {
		var page adminapi.AuditPage
		if err := json.Unmarshal(k.mustAdmin("GET", fmt.Sprintf("%s?after=%d&limit=1000&kind=attest", adminapi.PathAudit, after), "", nil), &page); err != nil {
			k.t.Fatal(err)
		}
		for _, e := range page.Entries {
			if e.TokenID != "" {
				ids[e.TokenID] = true
			}
		}
		if len(page.Entries) == 0 || page.Next == after {
			return ids
		}
		after = page.Next
	}
}

func (k *kbs) health() (int, string) {
	st, b := k.do(k.ts.Client(), "GET", "/healthz", "", nil, nil)
	return st, string(b)
}

func (k *kbs) storageUp() string {
	_, b := k.do(k.ts.Client(), "GET", "/metrics", "", nil, nil)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "kbs_storage_up ") {
			return strings.TrimPrefix(l, "kbs_storage_up ")
		}
	}
	return "(missing)"
}

// waitFor polls cond every 50 ms for at most d.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// A PostgreSQL restart (fast shutdown, start) under load: the replicas
// report unhealthy while it is down, recover without a restart of their
// own, guests that retry succeed, and every acknowledged attestation is in
// the audit log afterwards.
func TestPostgresRestartDuringUse(t *testing.T) {
	pg := pgtest.Start(t)
	ks := startReplicas(t, pg.NewDatabase(t), 2, nil)
	ks[0].allowAllAndPut("default/key/one", "before-restart")
	bases := urls(ks)
	for _, k := range ks {
		if st, b := k.health(); st != 200 || k.storageUp() != "1" {
			t.Fatalf("healthz before the restart: %d %q, kbs_storage_up %s", st, b, k.storageUp())
		}
	}

	var (
		stop     atomic.Bool
		ok, fail atomic.Int64
		mu       sync.Mutex
		acked    []string
		wg       sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				g := newLoadGuest(t, ks[0].ts.Client())
				tok, _, v, err := g.handshake(bases, "default/key/one")
				if tok != "" {
					mu.Lock()
					acked = append(acked, tok)
					mu.Unlock()
				}
				if err == nil && string(v) == "before-restart" {
					ok.Add(1)
					continue
				}
				fail.Add(1)
				time.Sleep(100 * time.Millisecond) // a guest retrying with backoff
			}
		}()
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	if !waitFor(10*time.Second, func() bool { return ok.Load() >= 8 }) {
		t.Fatalf("only %d handshakes succeeded before the restart (%d failed)", ok.Load(), fail.Load())
	}

	pg.Stop(t)
	down := time.Now()
	for i, k := range ks {
		var st int
		var body string
		if !waitFor(5*time.Second, func() bool { st, body = k.health(); return st == 503 }) {
			t.Fatalf("replica %d: healthz %d %q while PostgreSQL is down, want 503", i, st, body)
		}
		if !strings.Contains(body, "storage unavailable") {
			t.Errorf("replica %d: healthz body %q should say the storage is unavailable", i, body)
		}
		if up := k.storageUp(); up != "0" {
			t.Errorf("replica %d: kbs_storage_up %s while PostgreSQL is down, want 0", i, up)
		}
	}
	// A write while down fails within the retry bound, never hangs, and
	// says why.
	start := time.Now()
	st, b := ks[1].adminDo(adminapi.RoleAdmin, "POST", adminapi.PathResource+"default/key/down", "application/octet-stream", []byte("x"))
	if st != 503 || !strings.Contains(string(b), "PostgreSQL unreachable") || time.Since(start) > 15*time.Second {
		t.Fatalf("write while down: %d %s after %v; want 503 naming PostgreSQL within the retry bound", st, b, time.Since(start))
	}
	okDown := ok.Load()

	pg.Restart(t)
	t.Logf("PostgreSQL was down %v", time.Since(down).Round(time.Millisecond))
	for i, k := range ks {
		if !waitFor(15*time.Second, func() bool { st, _ := k.health(); return st == 200 }) {
			st, b := k.health()
			t.Fatalf("replica %d: healthz %d %q 15 s after PostgreSQL came back", i, st, b)
		}
		if up := k.storageUp(); up != "1" {
			t.Errorf("replica %d: kbs_storage_up %s after recovery", i, up)
		}
	}
	if !waitFor(20*time.Second, func() bool { return ok.Load() >= okDown+8 }) {
		t.Fatalf("guests did not recover: %d handshakes succeeded after the restart", ok.Load()-okDown)
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d handshakes succeeded, %d failed and were retried", ok.Load(), fail.Load())

	ids := auditTokenIDs(ks[1])
	mu.Lock()
	defer mu.Unlock()
	for _, tok := range acked {
		if !ids[jtiOf(t, tok)] {
			t.Errorf("attestation %s was acknowledged (token issued) but is not in the audit log", jtiOf(t, tok))
		}
	}
	if len(acked) < 16 {
		t.Fatalf("only %d tokens issued", len(acked))
	}
}

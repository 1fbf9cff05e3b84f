package server

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/kbs/store/pgtest"
)

// benchGuests is the number of guests handshaking at once, as in
// ci/integration's BenchmarkHandshake.
const benchGuests = 8

// BenchmarkHandshakeStorage runs full handshakes (auth, attest, resource;
// sample TEE, TLS with keep-alive) against kbs binaries: one on bbolt, one
// and three on one PostgreSQL, each step at a random replica. It reports
// handshakes/s, p50/p99 and the CPU of all kbs processes per handshake
// (PostgreSQL's own CPU is not included).
func BenchmarkHandshakeStorage(b *testing.B) {
	bin := buildKBS(b)
	pg := pgtest.Start(b)
	for _, v := range []struct {
		name     string
		replicas int
		postgres bool
	}{{"bbolt", 1, false}, {"postgres-1", 1, true}, {"postgres-3", 3, true}} {
		b.Run(v.name, func(b *testing.B) {
			dir := b.TempDir()
			pub, priv, _ := ed25519.GenerateKey(rand.Reader)
			der, _ := x509.MarshalPKIXPublicKey(pub)
			pubFile := filepath.Join(dir, "admin.pub")
			os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
			data := filepath.Join(dir, "data")
			args := []string{"--data-dir", data, "--admin-public-key", pubFile}
			if v.postgres {
				args = append(args, "--storage", pg.NewDatabase(b))
			}
			var procs []*kbsProcess
			var bases []string
			for range v.replicas {
				p := startKBSProcess(b, bin, args...)
				procs, bases = append(procs, p), append(bases, p.base)
			}
			caPEM, err := os.ReadFile(filepath.Join(data, "tls", "cert.pem"))
			if err != nil {
				b.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(caPEM)
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, MaxIdleConnsPerHost: benchGuests}
			defer tr.CloseIdleConnections()
			admin := adminClient{k: &kbs{t: nil, admin: priv, now: time.Now()}, tr: tr}
			for _, req := range []struct{ path, body string }{
				{adminapi.PathResource + "default/key/bench", "0123456789abcdef0123456789abcdef"},
				{adminapi.PathResourcePolicy, string(policyBody(allowAll))},
			} {
				if st, body, err := admin.do(bases[0], "POST", req.path, []byte(req.body)); err != nil || st != 200 {
					b.Fatalf("POST %s: %d %s %v", req.path, st, body, err)
				}
			}
			time.Sleep(time.Second) // the policy reaches every replica
			handshake := func() error {
				jar, _ := cookiejar.New(nil)
				g := newLoadGuest(b, nil)
				g.c = &http.Client{Jar: jar, Transport: tr, Timeout: 30 * time.Second}
				_, _, _, err := g.handshake(bases, "default/key/bench")
				return err
			}
			if err := handshake(); err != nil { // warm up, and fail fast
				b.Fatal(err)
			}

			cpu := func() (d time.Duration) {
				for _, p := range procs {
					d += processCPU(b, p.cmd.Process.Pid)
				}
				return d
			}
			cpu0 := cpu()
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, benchGuests)
			b.ResetTimer()
			start := time.Now()
			for range benchGuests {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
						t0 := time.Now()
						if err := handshake(); err != nil {
							errs <- err
							return
						}
						lat[i] = time.Since(t0)
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			kbsCPU := cpu() - cpu0
			close(errs)
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "handshakes/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(kbsCPU.Microseconds())/float64(b.N), "kbs-cpu-us/handshake")
		})
	}
}

// processCPU is the user+system CPU time of a process from /proc/PID/stat.
func processCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// utime and stime are the 14th and 15th fields, in USER_HZ (100) ticks.
	rest := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, err1 := strconv.ParseInt(rest[11], 10, 64)
	stime, err2 := strconv.ParseInt(rest[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

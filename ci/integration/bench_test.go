package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	snpevidence "github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
	"github.com/cloak-containers/cloak/attestation-agent/teekey"
	emulatedsnp "github.com/cloak-containers/cloak/emulated/snp"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbs/jwe"
	"github.com/cloak-containers/cloak/kbs/server"
	"github.com/cloak-containers/cloak/kbs/token"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	"github.com/cloak-containers/cloak/kbs/verifier/snp"
)

// benchConcurrency is the number of guests attesting at once.
const benchConcurrency = 8

// BenchmarkHandshake measures full guest handshakes against a real KBS over
// TLS on loopback: auth + attest (sample evidence, OPA appraisal, EAR token)
// + resource (OPA release decision, JWE to a fresh TEE key), each by a new
// client with a new TEE key and session, 8 at a time. Every decision is
// written durably to the audit log before the KBS answers.
//
//	keepalive: guests share TLS connections (the KBS's own cost)
//	newconn:   every handshake opens a new TLS connection (what a new VM does)
//	binary:    the real kbs binary in its own process, keepalive; also
//	           reports the KBS process's CPU time per handshake, which is the
//	           number to hold against the crypto floor
//	emulated-snp: keepalive with SEV-SNP evidence from an in-process
//	           emulated secure processor: the KBS verifies the full chain
//	           (VCEK from the evidence's cert table -> ASK -> ARK), the
//	           report signature and the SNP policy rules
func BenchmarkHandshake(b *testing.B) {
	for _, mode := range []string{"keepalive", "newconn", "binary", "emulated-snp"} {
		b.Run(mode, func(b *testing.B) {
			var k *kbsEnv
			var pid int
			var provider evidence.Provider = sample.New("1")
			switch mode {
			case "binary":
				k, pid = startKBSBinaryEnv(b)
			case "emulated-snp":
				k, provider = startKBSEmulatedSNP(b)
			default:
				k = startKBS(b)
			}
			ctx := ctxT(b)
			if _, err := k.admin.SetResource(ctx, "default/key/bench", []byte("0123456789abcdef0123456789abcdef")); err != nil {
				b.Fatal(err)
			}
			if err := k.admin.SetReferenceValue(ctx, "sample_svn", []string{"1"}); err != nil {
				b.Fatal(err)
			}
			if err := k.admin.SetResourcePolicy(ctx, []byte(devPolicy)); err != nil {
				b.Fatal(err)
			}
			path := kbstypes.ResourcePath{Repository: "default", Type: "key", Tag: "bench"}
			shared := k.transport().Clone()
			// Keep one idle connection per guest worker, so "keepalive" really
			// reuses connections (the default keeps 2 and churns TLS handshakes).
			shared.MaxIdleConnsPerHost = benchConcurrency
			handshake := func() error {
				tr := shared
				if mode == "newconn" {
					tr = shared.Clone()
					defer tr.CloseIdleConnections()
				}
				c, err := rcar.New(rcar.Config{URL: k.url, Provider: provider, Retries: -1,
					HTTPClient: &http.Client{Transport: tr, Timeout: 30 * time.Second}})
				if err != nil {
					return err
				}
				_, err = c.GetResource(ctx, path)
				return err
			}
			if err := handshake(); err != nil { // warm up, and fail fast
				b.Fatal(err)
			}

			cpu0 := processCPU(b, pid)
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, benchConcurrency)
			b.ResetTimer()
			start := time.Now()
			for range benchConcurrency {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
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
			if pid != 0 {
				b.ReportMetric(float64((processCPU(b, pid)-cpu0).Microseconds())/float64(b.N), "kbs-cpu-us/handshake")
			}
			close(errs)
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "handshakes/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkCryptoFloor is the pure cryptography of one handshake on the KBS:
// sign an EAR token, verify it (as a Bearer request would), and wrap a
// resource as JWE to a TEE key. Nothing else (no HTTP, policy or storage).
func BenchmarkCryptoFloor(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	signer := token.NewSigner(key, time.Minute, nil)
	tee, err := teekey.New(teekey.ECDHES)
	if err != nil {
		b.Fatal(err)
	}
	recipient, err := jwe.ParseRecipient(tee.PublicJWK())
	if err != nil {
		b.Fatal(err)
	}
	appraisal := token.Appraisal{
		Status: "affirming", PolicyID: "default",
		TrustVector: map[string]int{"hardware": 2, "configuration": 2},
		Annotated: map[string]any{
			"sample":              map[string]any{"svn": "1", "unsigned": true},
			"runtime_data_claims": map[string]any{"tee-pubkey": tee.PublicJWK(), "nonce": "bm9uY2U="},
		},
	}
	value := []byte("0123456789abcdef0123456789abcdef")
	b.ResetTimer()
	for b.Loop() {
		tok, _, err := signer.Issue(appraisal)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := signer.Verify(tok); err != nil {
			b.Fatal(err)
		}
		if _, err := recipient.Seal(value); err != nil {
			b.Fatal(err)
		}
	}
}

// startKBSBinaryEnv starts the real kbs binary and returns an environment for
// it and its PID.
func startKBSBinaryEnv(b *testing.B) (*kbsEnv, int) {
	dir := b.TempDir()
	pubPath := filepath.Join(dir, "admin.pub")
	if _, err := adminclient.GenerateKeyFiles(filepath.Join(dir, "admin.key"), pubPath, false); err != nil {
		b.Fatal(err)
	}
	priv, err := adminclient.LoadPrivateKey(filepath.Join(dir, "admin.key"))
	if err != nil {
		b.Fatal(err)
	}
	p := startKBSBinary(b, filepath.Join(dir, "kbs"), "--admin-public-key", pubPath, "--log-level", "warn")
	caPEM, err := os.ReadFile(p.ca)
	if err != nil {
		b.Fatal(err)
	}
	admin, err := adminclient.New(p.url, priv, adminclient.WithCACert(caPEM))
	if err != nil {
		b.Fatal(err)
	}
	return &kbsEnv{url: p.url, caPEM: caPEM, admin: admin}, p.cmd.Process.Pid
}

// processCPU is the user+system CPU time a process (all its threads) has
// used, from /proc/PID/stat; zero when pid is zero.
func processCPU(b *testing.B, pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line, in clock ticks (USER_HZ = 100).
	rest := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, err1 := strconv.ParseInt(rest[11], 10, 64)
	stime, err2 := strconv.ParseInt(rest[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// startKBSEmulatedSNP is an in-process KBS that trusts a fresh emulated SNP
// root (no CRL: it publishes none; collateral offline), with the launch
// measurement of the emulated SP it returns a provider for as reference
// value.
func startKBSEmulatedSNP(b *testing.B) (*kbsEnv, evidence.Provider) {
	root, err := emulatedsnp.LoadOrCreate(filepath.Join(b.TempDir(), "emulated-snp"))
	if err != nil {
		b.Fatal(err)
	}
	rootFile := filepath.Join(b.TempDir(), "cert_chain.pem")
	if err := os.WriteFile(rootFile, root.RootPEM(), 0o600); err != nil {
		b.Fatal(err)
	}
	roots, err := snp.LoadRoots([]string{rootFile})
	if err != nil {
		b.Fatal(err)
	}
	var launch emulatedsnp.Launch
	copy(launch.Measurement[:], strings.Repeat("m", len(launch.Measurement)))
	sp, err := emulatedsnp.New(root, launch)
	if err != nil {
		b.Fatal(err)
	}
	k := startKBSWith(b, func(c *server.Config) {
		c.SNP = snp.Options{ExtraRoots: roots, CRL: snp.CRLSkip,
			Fetcher: collateral.New(collateral.Options{Offline: true, Dir: b.TempDir()})}
	})
	if err := k.admin.SetReferenceValue(ctxT(b), "snp_launch_measurement", []string{hex.EncodeToString(launch.Measurement[:])}); err != nil {
		b.Fatal(err)
	}
	return k, snpevidence.New(inProcessSP{sp})
}

// inProcessSP serves reports from an emulated SP without a VM in between.
type inProcessSP struct{ sp *emulatedsnp.SP }

func (s inProcessSP) Name() string { return "in-process emulated SP" }

func (s inProcessSP) Report(_ context.Context, reportData [64]byte) ([]byte, []byte, error) {
	r, err := s.sp.Report(reportData, 0)
	return r, s.sp.CertTable(), err
}

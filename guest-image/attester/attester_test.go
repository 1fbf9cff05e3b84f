package attester

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a fake cloak-aa when FAKE_AA is set: it writes
// its arguments beside the socket, serves the socket until SIGTERM, or
// fails the way FAKE_AA says.
func TestMain(m *testing.M) {
	switch os.Getenv("FAKE_AA") {
	case "":
		os.Exit(m.Run())
	case "fail":
		fmt.Fprintln(os.Stderr, "cloak-aa: --kbs-cert: no certificate found")
		os.Exit(1)
	case "hang":
		time.Sleep(time.Hour)
	case "serve":
		var socket string
		for i, a := range os.Args {
			if a == "--socket" {
				socket = os.Args[i+1]
			}
		}
		os.WriteFile(filepath.Join(filepath.Dir(socket), "args"), []byte(strings.Join(os.Args[1:], " ")), 0o600)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		l, err := net.Listen("unix", socket)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		<-sig
		l.Close()
		os.Exit(0)
	}
}

func testCert(t testing.TB) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kbs"}, NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func initdataWith(kbsURL, cert string) []byte {
	aa := fmt.Sprintf("[token_configs.kbs]\nurl = %q\n", kbsURL)
	if cert != "" {
		aa += "cert = \"\"\"\n" + cert + "\"\"\"\n"
	}
	return []byte("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n" + aa + "'''\n\"policy.rego\" = '''\npackage agent_policy\n'''\n")
}

func TestParseInitdata(t *testing.T) {
	cert := testCert(t)
	tests := []struct {
		name    string
		in      []byte
		wantURL string
		wantErr string
	}{
		{"with cert", initdataWith("https://10.0.2.2:8080", cert), "https://10.0.2.2:8080", ""},
		{"no cert", initdataWith("http://10.0.2.2:8080", ""), "http://10.0.2.2:8080", ""},
		{"empty", nil, "", "empty"},
		{"not toml", []byte("version = "), "", "not TOML"},
		{"algorithm", []byte("version = \"0.1.0\"\nalgorithm = \"md5\"\n"), "", `algorithm "md5"`},
		{"no aa.toml", []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"x\"\n"), "", `no "aa.toml"`},
		{"no kbs", []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = \"[token_configs.coco_as]\\nurl = \\\"x\\\"\"\n"), "", "no [token_configs.kbs]"},
		{"bad url", initdataWith("file:///etc/passwd", ""), "", "want http(s)://"},
		{"bad cert", initdataWith("https://kbs", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "", "want CERTIFICATE"},
		{"oversized", []byte(strings.Repeat("#", MaxInitdata+1)), "", "limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseInitdata(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.KBS.URL != tc.wantURL || got.Algorithm != "sha384" || got.Data["policy.rego"] == "" {
				t.Errorf("parsed = %+v", got)
			}
		})
	}
}

func FuzzParseInitdata(f *testing.F) {
	f.Add(initdataWith("https://10.0.2.2:8080", testCert(f)))
	f.Add([]byte("version = \"1\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = \"\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseInitdata(b)
		if err != nil {
			return
		}
		if !strings.HasPrefix(d.KBS.URL, "http") || d.Version == "" || d.Data["aa.toml"] == "" {
			t.Fatalf("accepted unusable initdata %+v", d)
		}
	})
}

func fakeConfig(t *testing.T, mode string) config {
	t.Setenv("FAKE_AA", mode)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "aa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := noTEE(t)
	cfg.binary, cfg.runDir = exe, filepath.Join(dir, "run")
	return cfg
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestStartStop(t *testing.T) {
	cfg := fakeConfig(t, "serve")
	cert := testCert(t)
	initdata := initdataWith("https://10.0.2.2:8080", cert)
	a, err := start(context.Background(), initdata, quiet, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.KeyProviderSocket() != filepath.Join(cfg.runDir, "aa.sock") {
		t.Errorf("socket = %s", a.KeyProviderSocket())
	}
	args, _ := os.ReadFile(filepath.Join(cfg.runDir, "args"))
	want := fmt.Sprintf("serve --kbs https://10.0.2.2:8080 --initdata %[1]s/initdata.toml --socket %[1]s/aa.sock --kbs-cert %[1]s/kbs-cert.pem", cfg.runDir)
	if string(args) != want {
		t.Errorf("args = %q, want %q", args, want)
	}
	if got, _ := os.ReadFile(filepath.Join(cfg.runDir, "initdata.toml")); string(got) != string(initdata) {
		t.Errorf("initdata file differs from the bytes received")
	}
	if got, _ := os.ReadFile(filepath.Join(cfg.runDir, "kbs-cert.pem")); string(got) != cert {
		t.Errorf("cert file = %q", got)
	}
	pid := a.cmd.Process.Pid
	if err := a.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("cloak-aa pid %d still running after Stop", pid)
	}
	if err := a.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestStartFails(t *testing.T) {
	tests := []struct {
		mode, wantErr string
		timeout       time.Duration
	}{
		{"fail", "exited before serving (exit status 1): cloak-aa: --kbs-cert: no certificate found", time.Minute},
		{"hang", "did not open", 300 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			cfg := fakeConfig(t, tc.mode)
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			_, err := start(ctx, initdataWith("http://10.0.2.2:8080", ""), quiet, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want %q", err, tc.wantErr)
			}
		})
	}
	if _, err := start(context.Background(), []byte("nope"), quiet, config{binary: "/nonexistent", runDir: t.TempDir()}); err == nil {
		t.Error("bad initdata started an agent")
	}
}

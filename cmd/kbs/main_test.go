package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/internal/logging"
	"github.com/cloak-containers/cloak/internal/version"
)

// TestServe builds the binary, starts it on a free loopback port with a
// self-signed certificate, checks /healthz over TLS pinned to the generated
// certificate, and stops it with SIGTERM.
func TestServe(t *testing.T) {
	bin := kbsBinary(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--data-dir", dir)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "kbs listening on ")
	if !ok || !strings.HasPrefix(url, "https://127.0.0.1:") || strings.HasSuffix(url, ":0") {
		t.Fatalf("ready line %q", line)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "tls", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, body)
	}
	c.CloseIdleConnections()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("kbs did not stop after SIGTERM")
	}
}

// TestCommandLine: mistakes on the command line exit 2 before anything
// starts, saying what is wrong and where the usage is; --version exits 0.
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name         string
		args         []string
		code         int
		stdout, want string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "", "unknown flag: --bogus\n  run 'kbs --help' for usage"},
		{"no data dir", nil, 2, "", `required flag(s) "data-dir" not set`},
		{"cert without key", []string{"--data-dir", dir, "--tls-cert", "a.pem"}, 2, "", "--tls-cert needs --tls-key: add --tls-key FILE"},
		{"key without cert", []string{"--data-dir", dir, "--tls-key", "a.key"}, 2, "", "--tls-key needs --tls-cert"},
		{"stray argument", []string{"--data-dir", dir, "serve"}, 2, "", `unknown command "serve"`},
		{"version", []string{"--version"}, 0, "kbs version " + version.String() + "\n", ""},
		{"bad log level", []string{"--data-dir", dir, "--log-level", "loud"}, 2, "", "kbs: --log-level \"loud\": want debug, info, warn or error\n  run 'kbs --help' for usage"},
		{"bad log format", []string{"--data-dir", dir, "--log-format", "xml"}, 2, "", "kbs: --log-format \"xml\": want text or json\n  run 'kbs --help' for usage"},
		{"failure after the flags", []string{"--data-dir", dir, "--snp-crl", "sometimes"}, 1, "", "kbs: --snp-crl: "},
		{"auditor key file missing", []string{"--data-dir", dir, "--auditor-public-key", filepath.Join(dir, "missing.pub")}, 1, "", "kbs: --auditor-public-key: "},
		{"admin key file missing", []string{"--data-dir", dir, "--admin-public-key", filepath.Join(dir, "missing.pub")}, 1, "", "kbs: --admin-public-key: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := execute(t.Context(), tt.args, &stdout, &stderr)
			if code != tt.code || stdout.String() != tt.stdout || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, want %d\nstdout %q, want %q\nstderr %q, want it to contain %q", code, tt.code, stdout.String(), tt.stdout, stderr.String(), tt.want)
			}
			if code == 1 && strings.Contains(stderr.String(), "--help") {
				t.Errorf("a failure after the flags were accepted points to the usage: %q", stderr.String())
			}
		})
	}
}

// TestLogFormat: the KBS logs JSON lines by default and with --log-format
// json, slog text with --log-format text. The warning about the disabled
// admin API comes before --snp-crl stops the start, so no port is opened.
func TestLogFormat(t *testing.T) {
	const msg = "no --admin-public-key or --auditor-public-key given: the admin API is disabled"
	for _, format := range []string{"", "json", "text"} {
		t.Run(format, func(t *testing.T) {
			args := []string{"--data-dir", t.TempDir(), "--snp-crl", "sometimes"}
			if format != "" {
				args = append(args, "--log-format", format)
			}
			var stderr bytes.Buffer
			if code := execute(t.Context(), args, io.Discard, &stderr); code != 1 {
				t.Fatalf("exit %d, want 1; stderr %q", code, stderr.String())
			}
			line, _, _ := strings.Cut(stderr.String(), "\n")
			if format == "text" {
				if !strings.Contains(line, "level=WARN msg=\""+msg+"\"") {
					t.Fatalf("first line %q, want a slog text warning %q", line, msg)
				}
				return
			}
			var rec struct{ Level, Msg string }
			if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Level != "WARN" || rec.Msg != msg {
				t.Fatalf("first line %q (%v), want a JSON warning %q", line, err, msg)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"2MiB": 2 << 20, "512": 512, "4KiB": 4096} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "-1", "2MB", "x"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// TestVerifierFlags: the TDX and TPM verifier settings refuse unusable
// input with the flag's name, before anything listens.
func TestVerifierFlags(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyAKs := t.TempDir()
	tests := []struct {
		name string
		o    options
		want string
	}{
		{"ek roots without aks", options{tpmEKRoots: notPEM}, "need --tpm-trusted-aks"},
		{"no enrolled ak", options{tpmTrustedAKs: emptyAKs}, "--tpm-trusted-aks: trusted AK directory"},
		{"tdx root not pem", options{tdxExtraRoots: []string{notPEM}}, "--tdx-extra-root: " + notPEM + " holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.o
			o.dataDir, o.listen, o.snpCRL, o.maxBody = t.TempDir(), "127.0.0.1:0", "require", "1MiB"
			o.log = &logging.Options{Format: logging.JSON, Level: "error"}
			err := run(t.Context(), o, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if c, err := tpmConfig(&options{}); c != nil || err != nil {
		t.Errorf("no tpm flags: %v, %v; want no tpm verifier", c, err)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/internal/version"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestEvidence(t *testing.T) {
	code, out, errOut := runCLI(t, "evidence", "--sample-svn", "3")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var ev kbstypes.SampleEvidence
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	rd, _ := base64.StdEncoding.DecodeString(ev.ReportData)
	if ev.SVN != "3" || !bytes.Equal(rd, make([]byte, kbstypes.RuntimeDataDigestSize)) {
		t.Errorf("evidence = %+v, want svn 3 and a 48-byte zero report data", ev)
	}

	code, out, _ = runCLI(t, "evidence", "-o", "json")
	var wrapped struct {
		Tee      string          `json:"tee"`
		Evidence json.RawMessage `json:"evidence"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &wrapped) != nil || wrapped.Tee != "sample" || len(wrapped.Evidence) == 0 {
		t.Errorf("evidence -o json = %d %q", code, out)
	}
}

// problemServer answers every request with the given RFC 7807 problem.
func problemServer(t *testing.T, status int, check, detail string) *httptest.Server {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", kbstypes.ProblemContentType)
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(kbstypes.Problem{Status: status, Check: check, Detail: detail})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func writeCert(t *testing.T, srv *httptest.Server) string {
	path := filepath.Join(t.TempDir(), "kbs.pem")
	pemBytes := "-----BEGIN CERTIFICATE-----\n" + base64.StdEncoding.EncodeToString(srv.Certificate().Raw) + "\n-----END CERTIFICATE-----\n"
	if err := os.WriteFile(path, []byte(pemBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestErrors(t *testing.T) {
	denied := problemServer(t, 403, "attestation-policy", "evidence comes from the unsigned sample TEE")
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"bad resource", []string{"get-resource", "--kbs", denied.URL, "kbs:///a/b"}, "want exactly three segments"},
		{"unknown tee", []string{"evidence", "--tee", "cca"}, `unknown TEE "cca": this agent supports `},
		{"no snp here", []string{"evidence", "--tee", "snp"}, "no SEV-SNP report source in this guest"},
		{"untrusted cert", []string{"get-token", "--kbs", denied.URL}, "pass the KBS certificate with --kbs-cert"},
		{"refused", []string{"get-token", "--kbs", closed.URL}, "KBS " + closed.URL + " did not answer: 6 attempts over "},
		{"denied", []string{"get-token", "--kbs", denied.URL, "--kbs-cert", writeCert(t, denied)},
			"kbs denied attestation request (auth) (403 attestation-policy): evidence comes from the unsigned sample TEE"},
		{"missing initdata", []string{"get-token", "--kbs", denied.URL, "--initdata", "/nonexistent.toml"}, "read --initdata"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			if code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			if out != "" {
				t.Errorf("stdout = %q, want empty", out)
			}
			if !strings.HasPrefix(errOut, "cloak-aa: ") || !strings.Contains(errOut, tc.wantErr) || strings.Count(errOut, "\n") != 1 {
				t.Errorf("stderr = %q, want one line containing %q", errOut, tc.wantErr)
			}
		})
	}
}

// TestCommandLine: mistakes on the command line exit 2 with the way to the
// usage, before any evidence is taken; --version exits 0.
func TestCommandLine(t *testing.T) {
	const hint = "\n  run 'cloak-aa --help' for usage\n"
	tests := []struct {
		name         string
		args         []string
		code         int
		stdout, want string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "", "cloak-aa: unknown flag: --bogus" + hint},
		{"unknown flag of a subcommand", []string{"get-token", "--kbs", "https://x", "--socket", "s"}, 2, "", "cloak-aa: unknown flag: --socket" + hint},
		{"missing --kbs", []string{"get-token"}, 2, "", `cloak-aa: required flag(s) "kbs" not set` + hint},
		{"bad output", []string{"evidence", "-o", "yaml"}, 2, "", `cloak-aa: --output "yaml": want text or json` + hint},
		{"bad log level", []string{"serve", "--kbs", "https://x", "--log-level", "loud"}, 2, "", `cloak-aa: --log-level "loud": want debug, info, warn or error` + hint},
		{"bad log format", []string{"serve", "--kbs", "https://x", "--log-format", "xml"}, 2, "", `cloak-aa: --log-format "xml": want text or json` + hint},
		{"unknown command", []string{"attest"}, 2, "", `cloak-aa: unknown command "attest" for "cloak-aa"` + hint},
		{"version", []string{"--version"}, 0, "cloak-aa version " + version.String() + "\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tt.args...)
			if code != tt.code || out != tt.stdout || errOut != tt.want {
				t.Fatalf("exit %d, want %d\nstdout %q, want %q\nstderr %q, want %q", code, tt.code, out, tt.stdout, errOut, tt.want)
			}
		})
	}
}

func TestHelpHasExamples(t *testing.T) {
	for _, sub := range []string{"get-resource", "get-token", "serve", "evidence"} {
		code, out, _ := runCLI(t, sub, "--help")
		if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "cloak-aa "+sub) {
			t.Errorf("%s --help: exit %d, output %q", sub, code, out)
		}
	}
}

// TestJSONErrors: with -o json a failure is one JSON object on stdout,
// {"error", "hint"}, and nothing on stderr; the exit code is as in text.
func TestJSONErrors(t *testing.T) {
	denied := problemServer(t, 403, "attestation-policy", "evidence comes from the unsigned sample TEE")
	tests := []struct {
		name string
		args []string
		code int
		hint string
	}{
		{"unknown flag", []string{"evidence", "-o", "json", "--bogus"}, 2, "run 'cloak-aa --help' for usage"},
		{"missing required flag", []string{"-o", "json", "get-token"}, 2, "run 'cloak-aa --help' for usage"},
		{"no snp here", []string{"-o", "json", "evidence", "--tee", "snp"}, 1, ""},
		{"untrusted cert", []string{"-o", "json", "get-token", "--kbs", denied.URL}, 1, "pass the KBS certificate with --kbs-cert"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			obj := testutil.OneJSONObject(t, out)
			msg, _ := obj["error"].(string)
			hint, hasHint := obj["hint"].(string)
			if code != tc.code || errOut != "" || msg == "" || hint != tc.hint || hasHint != (tc.hint != "") {
				t.Errorf("exit %d (want %d), stdout %s, stderr %q; want error and hint %q", code, tc.code, out, errOut, tc.hint)
			}
		})
	}
}

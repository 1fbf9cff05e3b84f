package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	"github.com/cloak-containers/cloak/policy"
)

// runKbsctl runs kbsctl in-process and returns exit code, stdout, stderr.
func runKbsctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := newApp(func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr).execute(context.Background(), args)
	return code, stdout.String(), stderr.String()
}

func writeEvidenceFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// genuineAt is inside the validity of go-sev-guest's genuine Milan VCEK.
const genuineAt = "2023-01-01T00:00:00Z"

func TestEvidenceVerifySNP(t *testing.T) {
	dir := t.TempDir()
	report := writeEvidenceFile(t, dir, "report.bin", testdata.AttestationBytes)
	vcek := writeEvidenceFile(t, dir, "vcek.der", testdata.VcekBytes)
	flipped := bytes.Clone(testdata.AttestationBytes)
	flipped[0x90] ^= 1
	bad := writeEvidenceFile(t, dir, "bad.bin", flipped)
	short := writeEvidenceFile(t, dir, "short.bin", testdata.AttestationBytes[:100])

	// Offline collateral directory holding the VCEK under its KDS URL.
	coll := filepath.Join(dir, "collateral")
	r, _ := abi.ReportToProto(testdata.AttestationBytes)
	p, err := collateral.OfflinePath(coll, kds.VCEKCertURL("Milan", r.GetChipId(), kds.TCBVersion(r.GetReportedTcb())))
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(p), 0o755)
	writeEvidenceFile(t, filepath.Dir(p), filepath.Base(p), testdata.VcekBytes)

	pol := writeEvidenceFile(t, dir, "policy.rego", policy.DefaultAttestationSource())
	refs, _ := json.Marshal(map[string][]string{"snp_launch_measurement": {"b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"}})
	refFile := writeEvidenceFile(t, dir, "refs.json", refs)

	tests := []struct {
		name     string
		args     []string
		code     int
		out, err string
	}{
		{"valid with vcek", []string{"evidence", "verify", "--tee", "snp", "--file", report, "--vcek", vcek, "--at", genuineAt},
			0, "verdict: valid", ""},
		{"valid from collateral dir", []string{"evidence", "verify", "--tee", "snp", "--file", report, "--collateral", coll, "--at", genuineAt},
			0, "cert_source = kds", ""},
		{"flipped bit", []string{"evidence", "verify", "--tee", "snp", "--file", bad, "--vcek", vcek, "--at", genuineAt},
			1, "verdict: invalid (snp report signature does not verify", "evidence is invalid"},
		{"no vcek anywhere", []string{"evidence", "verify", "--tee", "snp", "--file", report, "--at", genuineAt},
			1, "verdict: invalid", ""},
		{"policy refuses debug", []string{"evidence", "verify", "--tee", "snp", "--file", report, "--vcek", vcek, "--at", genuineAt,
			"--policy", pol, "--reference-values", refFile}, 1, "FAIL [configuration] the guest policy allows debugging", ""},
		{"short report", []string{"evidence", "verify", "--tee", "snp", "--file", short}, 2, "", "an SNP report is 1184 bytes"},
		{"unknown tee", []string{"evidence", "verify", "--tee", "sgx", "--file", report}, 2, "", "want one of snp"},
		{"bad time", []string{"evidence", "verify", "--tee", "snp", "--file", report, "--at", "yesterday"}, 2, "", "RFC 3339"},
		{"refs without policy", []string{"evidence", "verify", "--tee", "snp", "--file", report, "--reference-values", refFile}, 2, "", "needs --policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runKbsctl(t, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) {
				t.Fatalf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant stdout %q, stderr %q", code, tc.code, out, errOut, tc.out, tc.err)
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		code, out, _ := runKbsctl(t, "-o", "json", "evidence", "verify", "--tee", "snp", "--file", report, "--vcek", vcek, "--at", genuineAt)
		var res struct {
			Verdict string         `json:"verdict"`
			Claims  map[string]any `json:"claims"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Verdict != "valid" || res.Claims["product_line"] != "Milan" {
			t.Fatalf("exit %d, output %s", code, out)
		}
	})
	// An invalid verdict is the result object itself, with "error": one
	// object on stdout, exit 1; unusable input is an error object, exit 2.
	t.Run("json invalid", func(t *testing.T) {
		code, out, errOut := runKbsctl(t, "-o", "json", "evidence", "verify", "--tee", "snp", "--file", report, "--vcek", vcek, "--at", genuineAt,
			"--policy", pol, "--reference-values", refFile)
		obj := testutil.OneJSONObject(t, out)
		ap, _ := obj["appraisal"].(map[string]any)
		msg, _ := obj["error"].(string)
		if code != 1 || errOut != "" || obj["verdict"] != "invalid" || ap["policy_id"] == nil || ap["trust_vector"] == nil ||
			!strings.Contains(msg, "snp evidence is invalid") {
			t.Fatalf("exit %d, stdout %s, stderr %q", code, out, errOut)
		}
	})
	t.Run("json unusable", func(t *testing.T) {
		code, out, errOut := runKbsctl(t, "-o", "json", "evidence", "verify", "--tee", "snp", "--file", short)
		obj := testutil.OneJSONObject(t, out)
		if code != 2 || errOut != "" || !strings.Contains(obj["error"].(string), "1184 bytes") || obj["hint"] != "run 'kbsctl --help' for usage" {
			t.Fatalf("exit %d, stdout %s, stderr %q", code, out, errOut)
		}
	})
}

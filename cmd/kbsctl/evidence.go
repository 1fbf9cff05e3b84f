package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/internal/cmdline"
	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	"github.com/cloak-containers/cloak/kbs/verifier/snp"
	"github.com/cloak-containers/cloak/policy"
)

// maxEvidenceFile bounds --file: an SNP report with its certificate table,
// a TDX quote with its collateral, or Trustee evidence JSON.
const maxEvidenceFile = 1 << 20

// evidenceInput is what `evidence verify` hands to a TEE's offline check.
type evidenceInput struct {
	data          []byte    // --file
	vcek          []byte    // --vcek (DER or PEM), SNP only
	collateralDir string    // --collateral: offline directory, never the network
	extraRoots    []string  // --snp-extra-root
	at            time.Time // --at
}

// evidenceVerifiers maps a TEE name to its offline check, which returns the
// claims, an unusableInput error when the input cannot be checked at all, or
// another error naming why the evidence is not authentic.
var evidenceVerifiers = map[string]func(context.Context, evidenceInput) (map[string]any, error){
	"snp": verifySNPEvidence,
}

// unusableInput marks input that could not be checked (exit code 2).
type unusableInput struct{ error }

func (u unusableInput) Unwrap() error { return u.error }

func verifySNPEvidence(ctx context.Context, in evidenceInput) (map[string]any, error) {
	parse := snp.ParseRaw
	if trimmed := strings.TrimSpace(string(in.data[:min(len(in.data), 16)])); strings.HasPrefix(trimmed, "{") {
		parse = snp.ParseEvidence
	}
	report, chain, err := parse(in.data)
	if err != nil {
		return nil, unusableInput{fmt.Errorf("--file: %w", err)}
	}
	if len(in.vcek) > 0 {
		der := in.vcek
		if b, _ := pem.Decode(in.vcek); b != nil {
			der = b.Bytes
		}
		chain.VcekCert = der
	}
	roots, err := snp.LoadRoots(in.extraRoots)
	if err != nil {
		return nil, unusableInput{err}
	}
	o := snp.Options{ExtraRoots: roots, CRL: snp.CRLSkip, Now: func() time.Time { return in.at }}
	if in.collateralDir != "" {
		o.Fetcher = collateral.New(collateral.Options{Dir: in.collateralDir, Offline: true})
		o.CRL = snp.CRLIfAvailable
	}
	v, err := snp.New(o)
	if err != nil {
		return nil, unusableInput{err}
	}
	var ce *verifier.CheckError
	claims, err := v.VerifyReport(ctx, report, chain, nil, nil)
	if err != nil && errors.As(err, &ce) && strings.HasPrefix(ce.Detail, "malformed") {
		return nil, unusableInput{err}
	}
	return claims, err
}

func (a *app) evidenceCmd() *cobra.Command {
	cmd := groupCmd("evidence", "Check TEE evidence offline, without a KBS", "",
		"  kbsctl evidence verify --tee snp --file report.bin --vcek vcek.der")
	var (
		tee, file, vcek, collateralDir, at, policyFile, refFile string
		extraRoots                                              []string
	)
	verifyCmd := &cobra.Command{
		Use:   "verify --tee TEE --file F",
		Short: "Verify raw evidence with the KBS's verifier code and print its claims and verdict",
		Long: `Verify raw evidence exactly as the KBS would (signatures, certificate chains,
revocation when the CRL is in --collateral), then print every claim and the
verdict. With --policy the claims are also appraised by that attestation policy
(and --reference-values, a JSON object of name -> list of accepted values).
Nothing is fetched from the network: missing certificates must be in the file,
in --vcek or in the --collateral directory.

Exit status: 0 valid, 1 invalid, 2 unusable input.`,
		Example: `  kbsctl evidence verify --tee snp --file report.bin --vcek vcek.der
  kbsctl evidence verify --tee snp --file report.bin --collateral /srv/collateral --at 2024-06-01T00:00:00Z
  kbsctl -o json evidence verify --tee snp --file evidence.json --policy attestation.rego --reference-values refs.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			check, ok := evidenceVerifiers[tee]
			if !ok {
				return usagef("--tee %q: want one of %s", tee, strings.Join(slices.Sorted(maps.Keys(evidenceVerifiers)), ", "))
			}
			in := evidenceInput{collateralDir: collateralDir, extraRoots: extraRoots, at: time.Now()}
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return usagef("--at %q: want an RFC 3339 time like 2024-06-01T00:00:00Z", at)
				}
				in.at = t
			}
			var err error
			if in.data, err = a.readInput(file, maxEvidenceFile); err != nil {
				return usageError{err}
			}
			if vcek != "" {
				if in.vcek, err = a.readInput(vcek, maxEvidenceFile); err != nil {
					return usageError{fmt.Errorf("--vcek: %w", err)}
				}
			}
			var pol *policy.AttestationPolicy
			refs := map[string][]string{}
			if policyFile != "" {
				src, err := a.readInput(policyFile, maxPolicySize)
				if err != nil {
					return usageError{fmt.Errorf("--policy: %w", err)}
				}
				if pol, err = policy.CompileAttestation("kbsctl", src); err != nil {
					return usageError{fmt.Errorf("--policy: %w", err)}
				}
			}
			if refFile != "" {
				if pol == nil {
					return usagef("--reference-values needs --policy")
				}
				b, err := a.readInput(refFile, maxPolicySize)
				if err != nil {
					return usageError{fmt.Errorf("--reference-values: %w", err)}
				}
				if err := json.Unmarshal(b, &refs); err != nil {
					return usageError{fmt.Errorf("--reference-values: want a JSON object of name -> list of strings: %w", err)}
				}
			}
			return a.verifyEvidence(cmd.Context(), tee, check, in, pol, refs)
		},
	}
	f := verifyCmd.Flags()
	f.StringVar(&tee, "tee", "", "TEE of the evidence: "+strings.Join(slices.Sorted(maps.Keys(evidenceVerifiers)), ", "))
	f.StringVarP(&file, "file", "f", "", `evidence: raw report/quote (SNP: the 1184-byte report, optionally followed by its certificate table) or Trustee evidence JSON ("-" reads standard input)`)
	f.StringVar(&vcek, "vcek", "", "SNP: VCEK/VLEK certificate (DER or PEM) when the file has none")
	f.StringVar(&collateralDir, "collateral", "", "offline collateral directory (layout: docs/attestation.md)")
	f.StringVar(&at, "at", "", "verification time, RFC 3339 (default now)")
	f.StringVar(&policyFile, "policy", "", "attestation policy (Rego) to appraise the claims with")
	f.StringVar(&refFile, "reference-values", "", "JSON object of reference values for --policy")
	f.StringArrayVar(&extraRoots, "snp-extra-root", nil, "SNP: PEM ASK+ARK of an extra (emulated) root to trust (repeatable)")
	cmd.AddCommand(verifyCmd)
	return cmd
}

// evidenceResult is the JSON output of `evidence verify`.
type evidenceResult struct {
	Tee       string            `json:"tee"`
	Verdict   string            `json:"verdict"` // valid, invalid
	Reason    string            `json:"reason"`
	Claims    map[string]any    `json:"claims,omitempty"`
	Appraisal *policy.Appraisal `json:"appraisal,omitempty"`
	// Error is the failure an invalid verdict exits 1 with: with -o json
	// it is said here, the result being the one object on stdout.
	Error string `json:"error,omitempty"`
}

func (a *app) verifyEvidence(ctx context.Context, tee string, check func(context.Context, evidenceInput) (map[string]any, error),
	in evidenceInput, pol *policy.AttestationPolicy, refs map[string][]string,
) error {
	claims, err := check(ctx, in)
	var unusable unusableInput
	if errors.As(err, &unusable) {
		return usageError{unusable.error}
	}
	res := evidenceResult{Tee: tee, Verdict: "valid", Reason: "the evidence is authentic", Claims: claims}
	if err != nil {
		res.Verdict, res.Reason = "invalid", err.Error()
	} else if pol != nil {
		ap, err := pol.Appraise(ctx, policy.AppraisalInput{Tee: tee, Reference: refs,
			Claims: map[string]any{tee: claims, "init_data": "", "init_data_claims": nil}})
		if err != nil {
			return usageError{err}
		}
		res.Appraisal = ap
		res.Reason = "the evidence is authentic and the policy's verdict is " + ap.Status
		if ap.Status == "contraindicated" || ap.Status == "none" {
			res.Verdict = "invalid"
		}
	}
	var invalid error
	if res.Verdict != "valid" {
		invalid = fmt.Errorf("%s evidence is invalid: %s", tee, res.Reason)
		res.Error = invalid.Error()
	}
	if err := a.emit(res, func(w io.Writer) { printEvidenceResult(w, res) }); err != nil {
		return err
	}
	if invalid != nil && a.output == "json" {
		return cmdline.Reported(invalid)
	}
	return invalid
}

func printEvidenceResult(w io.Writer, res evidenceResult) {
	var lines []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok {
			for k, sub := range m {
				walk(prefix+k+".", sub)
			}
			return
		}
		lines = append(lines, fmt.Sprintf("  %s = %v", strings.TrimSuffix(prefix, "."), v))
	}
	walk("", res.Claims)
	slices.Sort(lines)
	if len(lines) > 0 {
		fmt.Fprintln(w, "claims:")
		fmt.Fprintln(w, strings.Join(lines, "\n"))
	}
	if res.Appraisal != nil {
		fmt.Fprintf(w, "appraisal (%s): %v\n", res.Appraisal.Status, res.Appraisal.TrustVector)
		for _, f := range res.Appraisal.Findings {
			mark := "ok  "
			if !f.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  %s [%s] %s\n", mark, f.Group, f.Message)
		}
	}
	fmt.Fprintf(w, "verdict: %s (%s)\n", res.Verdict, res.Reason)
}

// Package snp verifies AMD SEV-SNP evidence: parse (evidence.go) -> verify
// the report signature and the VCEK/VLEK -> ASK/ASVK -> ARK chain with
// go-sev-guest's verify package -> check report data, host data and VMPL ->
// claims. Guest-policy bits (debug, SMT, migration agent) and TCB minimums are
// claims for the attestation policy, not verification failures.
//
// Trust: AMD's ARK/ASK/ASVK for Milan, Genoa and Turin embedded in
// go-sev-guest, plus optional extra roots (the emulated-snp test chain); a
// report chained to an extra root gets the claim emulated=true. Turin: the
// embedded roots verify, but go-sev-guest v0.15.0 builds Turin VCEK URLs and
// TCB fields with the Milan layout (upstream issue #165), so a Turin VCEK must
// come with the evidence (or the offline directory under the URL it asks for)
// and its TCB claims are decoded with the Milan layout.
package snp

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
)

// productLines are the lines whose AMD roots go-sev-guest embeds.
var productLines = []string{"Milan", "Genoa", "Turin"}

// CRLMode says what to do with AMD's certificate revocation list.
type CRLMode int

const (
	// CRLRequire fetches the CRL (fetcher, cache or offline directory) and
	// refuses evidence when it cannot be had, is not signed by the ARK, or
	// revokes the ASK/ASVK or the VCEK/VLEK.
	CRLRequire CRLMode = iota
	// CRLIfAvailable checks the CRL when it can be fetched and otherwise
	// reports crl_checked=false.
	CRLIfAvailable
	// CRLSkip never looks at the CRL.
	CRLSkip
)

// Options configures a Verifier.
type Options struct {
	// Fetcher gets VCEKs, ASK/ARK chains and CRLs missing from the evidence
	// (AMD KDS, through its cache or offline directory). Nil: the evidence must
	// carry its VCEK/VLEK and CRLs are unavailable.
	Fetcher *collateral.Fetcher
	// ExtraRoots are trusted in addition to AMD's; evidence chained to one of
	// them is marked emulated=true. Load them with ParseRoot.
	ExtraRoots []*trust.AMDRootCerts
	CRL        CRLMode
	// Now is the verification time (certificate and CRL validity).
	Now func() time.Time
}

// Verifier verifies SNP evidence.
type Verifier struct {
	opts  Options
	roots map[string][]*trust.AMDRootCerts
	extra map[*trust.AMDRootCerts]bool
}

var _ verifier.Verifier = (*Verifier)(nil)

// New returns a Verifier trusting AMD's roots and o.ExtraRoots.
func New(o Options) (*Verifier, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	v := &Verifier{opts: o, roots: map[string][]*trust.AMDRootCerts{}, extra: map[*trust.AMDRootCerts]bool{}}
	for _, line := range productLines {
		r, err := trust.GetDefaultRootCerts(line)
		if err != nil {
			return nil, fmt.Errorf("load AMD %s roots: %w", line, err)
		}
		v.roots[line] = append(v.roots[line], r)
	}
	for _, r := range o.ExtraRoots {
		line := r.GetProductLine()
		if _, ok := v.roots[line]; !ok {
			return nil, fmt.Errorf("extra SNP root for unknown product line %q (want one of %v)", line, productLines)
		}
		v.roots[line] = append(v.roots[line], r)
		v.extra[r] = true
	}
	return v, nil
}

// ParseRoot reads an ASK (or ASVK) and ARK in PEM, in the order AMD KDS's
// cert_chain serves them, and names the product line from the ARK's common
// name ("ARK-Milan" -> Milan). It is how an extra (emulated) root is loaded.
func ParseRoot(pemBytes []byte) (*trust.AMDRootCerts, error) {
	var pc trust.ProductCerts
	if err := pc.FromKDSCertBytes(pemBytes); err != nil {
		return nil, fmt.Errorf("want the ASK and ARK certificates in PEM (as KDS cert_chain serves them): %w", err)
	}
	line, ok := strings.CutPrefix(pc.Ark.Subject.CommonName, "ARK-")
	if !ok {
		return nil, fmt.Errorf("ARK common name %q does not name a product line (want ARK-Milan, ARK-Genoa or ARK-Turin)", pc.Ark.Subject.CommonName)
	}
	r := trust.AMDRootCertsProduct(line)
	if strings.Contains(pc.Ask.Subject.CommonName, "VLEK") {
		pc.Asvk, pc.Ask = pc.Ask, nil
	}
	r.ProductCerts = &pc
	return r, nil
}

// Verify implements verifier.Verifier for Trustee-format SNP evidence.
func (v *Verifier) Verify(ctx context.Context, evidence json.RawMessage, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	expectedReportData, err := verifier.FitReportData(kbstypes.TeeSNP, expectedReportData)
	if err != nil {
		return nil, err
	}
	raw, chain, err := ParseEvidence(evidence)
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSNP, err)
	}
	return v.VerifyReport(ctx, raw, chain, expectedReportData, initdataDigest)
}

// VerifyReport verifies a raw report with an optional certificate chain
// (nil: everything from the fetcher). expectedReportData nil skips the
// report-data binding (kbsctl without a nonce); initdataDigest nil skips
// the HOST_DATA check.
func (v *Verifier) VerifyReport(ctx context.Context, raw []byte, chain *spb.CertificateChain, expectedReportData, initdataDigest []byte) (map[string]any, error) {
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSNP, err)
	}
	if chain == nil {
		chain = &spb.CertificateChain{}
	}
	if chain.Extras == nil {
		chain.Extras = map[string][]byte{}
	}
	info, err := abi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		return nil, verifier.MalformedEvidence(kbstypes.TeeSNP, err)
	}
	if info.SigningKey != abi.VcekReportSigner && info.SigningKey != abi.VlekReportSigner {
		return nil, evidenceErr(fmt.Sprintf("snp report is signed by %v, want VCEK or VLEK", info.SigningKey), nil)
	}
	certSource := "evidence"
	if len(chain.GetVcekCert()) == 0 && len(chain.GetVlekCert()) == 0 {
		certSource = "kds"
	}
	v.prefillRoots(report, chain)

	now := v.opts.Now()
	getter := &getter{ctx: ctx, f: v.opts.Fetcher}
	vopts := &verify.Options{
		Now:                 now,
		TrustedRoots:        v.roots,
		Getter:              getter,
		DisableCertFetching: v.opts.Fetcher == nil,
	}
	att := &spb.Attestation{Report: report, CertificateChain: chain}
	if err := verify.SnpAttestationContext(ctx, att, vopts); err != nil {
		return nil, chainErr(err, certSource)
	}
	ek, root, err := v.signer(att, info.SigningKey)
	if err != nil {
		return nil, evidenceErr("snp endorsement key", err)
	}
	crlChecked, err := v.checkCRL(ctx, root, ek, vopts)
	if err != nil {
		return nil, err
	}
	// Guest policy bits are policy matters: allow everything here and report
	// them as claims. validate still checks the TCB consistency of report and
	// VCEK and the committed/current firmware relations.
	vmpl := 0
	if err := validate.SnpAttestation(att, &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			ABIMajor: 0, ABIMinor: 0, SMT: true, MigrateMA: true, Debug: true, CXLAllowed: true,
		},
		PermitProvisionalFirmware: true,
	}); err != nil {
		return nil, evidenceErr("snp report fields are inconsistent with its "+info.SigningKey.String()+" certificate", err)
	}
	if expectedReportData != nil && subtle.ConstantTimeCompare(report.GetReportData(), expectedReportData) != 1 {
		return nil, verifier.ReportDataMismatch(expectedReportData, report.GetReportData())
	}
	hostDataChecked := false
	if initdataDigest != nil {
		want := HostDataFor(initdataDigest)
		if !bytes.Equal(report.GetHostData(), want) {
			return nil, evidenceErr(fmt.Sprintf("snp HOST_DATA %x does not match the init-data digest %x (as HOST_DATA: %x): the guest was launched with other init-data",
				report.GetHostData(), initdataDigest, want), nil)
		}
		hostDataChecked = true
	}
	if int(report.GetVmpl()) != vmpl {
		return nil, evidenceErr(fmt.Sprintf("snp report was requested at VMPL %d, want %d: a lower-privileged guest component asked for it", report.GetVmpl(), vmpl), nil)
	}
	claims := Claims(report)
	claims["signing_key"] = strings.ToLower(info.SigningKey.String())
	claims["product_line"] = root.GetProductLine()
	claims["emulated"] = v.extra[root]
	claims["crl_checked"] = crlChecked
	claims["cert_source"] = certSource
	claims["init_data"] = hex.EncodeToString(initdataDigest)
	claims["host_data_checked"] = hostDataChecked
	return claims, nil
}

// HostDataFor is the HOST_DATA a guest launched with init-data of this digest
// carries: the digest itself when it is 32 bytes (sha256, Cloak's default);
// a shorter digest is zero-padded and a longer one (sha384/sha512) truncated
// to 32 bytes, as Trustee and guest-components do.
func HostDataFor(digest []byte) []byte {
	out := make([]byte, abi.HostDataSize)
	copy(out, digest)
	return out
}

// prefillRoots fills missing ASK/ARK with AMD's embedded ones so that
// go-sev-guest does not fetch cert_chain from KDS for nothing: the chain in
// the evidence is never trusted, only TrustedRoots are.
func (v *Verifier) prefillRoots(report *spb.Report, chain *spb.CertificateChain) {
	if len(chain.GetAskCert()) > 0 && len(chain.GetArkCert()) > 0 {
		return
	}
	line := "Milan" // go-sev-guest's default for v2 reports without a VCEK too
	if fms := report.GetCpuid1EaxFms(); fms != 0 {
		line = kds.ProductLineFromFms(fms)
	} else if c, err := x509.ParseCertificate(chain.GetVcekCert()); err == nil {
		if exts, err := kds.VcekCertificateExtensions(c); err == nil {
			if p, err := kds.ParseProductName(exts.ProductName, abi.VcekReportSigner); err == nil {
				line = kds.ProductLine(p)
			}
		}
	}
	rs := v.roots[line]
	if len(rs) == 0 {
		return
	}
	if len(chain.GetAskCert()) == 0 && rs[0].ProductCerts.Ask != nil {
		chain.AskCert = rs[0].ProductCerts.Ask.Raw
	}
	if len(chain.GetArkCert()) == 0 {
		chain.ArkCert = rs[0].ProductCerts.Ark.Raw
	}
}

// signer finds the endorsement key certificate and the trusted root that
// issued it (go-sev-guest verified the chain but does not say which root).
func (v *Verifier) signer(att *spb.Attestation, key abi.ReportSigner) (*x509.Certificate, *trust.AMDRootCerts, error) {
	der := att.GetCertificateChain().GetVcekCert()
	if key == abi.VlekReportSigner {
		der = att.GetCertificateChain().GetVlekCert()
	}
	ek, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	for _, line := range productLines {
		for _, r := range v.roots[line] {
			ica := r.ProductCerts.Ask
			if key == abi.VlekReportSigner {
				ica = r.ProductCerts.Asvk
			}
			if ica != nil && ek.CheckSignatureFrom(ica) == nil {
				return ek, r, nil
			}
		}
	}
	return nil, nil, fmt.Errorf("%v certificate was verified but no trusted intermediate signed it", key)
}

// checkCRL checks AMD's CRL for the root that issued ek: the CRL must be
// signed by the ARK and must not list the ASK/ASVK or ek.
func (v *Verifier) checkCRL(ctx context.Context, root *trust.AMDRootCerts, ek *x509.Certificate, vopts *verify.Options) (bool, error) {
	if v.opts.CRL == CRLSkip {
		return false, nil
	}
	if root.ProductCerts.Ask == nil {
		// A VLEK-only root: go-sev-guest reads the CRL URL from the ASK.
		if v.opts.CRL == CRLRequire {
			return false, evidenceErr("snp CRL check needs the ASK of the "+root.GetProductLine()+" root, which is not configured", nil)
		}
		return false, nil
	}
	crl, err := verify.GetCrlAndCheckRootContext(ctx, root, vopts)
	var unavailable verify.CRLUnavailableErr
	if errors.As(err, &unavailable) {
		if v.opts.CRL == CRLIfAvailable {
			return false, nil
		}
		return false, evidenceErr(fmt.Sprintf("snp CRL %v is unavailable: allow the KBS to reach AMD KDS or put the CRL in the offline collateral directory",
			root.ProductCerts.Ask.CRLDistributionPoints), err)
	}
	if err != nil {
		return false, evidenceErr("snp CRL check failed for the "+root.GetProductLine()+" chain", err)
	}
	if vopts.Now.After(crl.NextUpdate) && !crl.NextUpdate.IsZero() {
		if v.opts.CRL == CRLIfAvailable {
			return false, nil
		}
		return false, evidenceErr(fmt.Sprintf("snp CRL for %s expired at %s: refresh it (KDS or offline directory)", root.GetProductLine(), crl.NextUpdate.Format(time.RFC3339)), nil)
	}
	for _, rc := range crl.RevokedCertificateEntries {
		if rc.SerialNumber.Cmp(ek.SerialNumber) == 0 {
			return false, evidenceErr(fmt.Sprintf("snp endorsement key certificate (serial %s) was revoked at %s", ek.SerialNumber, rc.RevocationTime.Format(time.RFC3339)), nil)
		}
	}
	return true, nil
}

func evidenceErr(detail string, err error) error {
	return &verifier.CheckError{Check: verifier.CheckEvidence, Detail: detail, Err: err}
}

// chainErr names what go-sev-guest's verify refused. Its exported errors are
// matched by type: *trust.AttestationRecreationErr (a certificate it had to
// fetch could not be had; it carries the getter's error, e.g. a
// collateral.MissingError, only as text) and ErrMissingVlek. go-sev-guest
// v0.15.0 returns the others as fmt.Errorf with %v and no exported type, so
// those are told apart by their words; TestChainErrClassification pins both
// kinds, so an upgrade that changes them fails there.
func chainErr(err error, certSource string) error {
	var fetch *trust.AttestationRecreationErr
	switch {
	case errors.As(err, &fetch):
		return evidenceErr("snp endorsement key certificate is not in the evidence and could not be fetched from AMD KDS: provide it in the evidence, allow KDS access, or add it to the offline collateral directory", err)
	case errors.Is(err, verify.ErrMissingVlek):
		return evidenceErr("snp certificate chain is incomplete (cert source: "+certSource+")", err)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "report signature verification error"):
		return evidenceErr("snp report signature does not verify with its endorsement key: the report or its certificate was altered", err)
	case strings.Contains(msg, "could not be verified by any trusted roots"):
		return evidenceErr("snp endorsement key certificate does not chain to a trusted AMD root (or a configured extra root), or is outside its validity period", err)
	case strings.Contains(msg, "missing"):
		return evidenceErr("snp certificate chain is incomplete (cert source: "+certSource+")", err)
	}
	return evidenceErr("snp report or certificate chain is invalid", err)
}

// getter adapts the collateral fetcher to go-sev-guest's HTTPSGetter.
type getter struct {
	ctx context.Context
	f   *collateral.Fetcher
}

func (g *getter) Get(url string) ([]byte, error) { return g.GetContext(g.ctx, url) }

func (g *getter) GetContext(ctx context.Context, url string) ([]byte, error) {
	if g.f == nil {
		return nil, &collateral.MissingError{URL: url}
	}
	_, b, err := g.f.Get(ctx, url)
	return b, err
}

// Claims are the report's fields as attestation-policy input. Byte strings
// are lower-case hex; TCBs are objects of their SPL parts.
func Claims(r *spb.Report) map[string]any {
	pol, _ := abi.ParseSnpPolicy(r.GetPolicy())
	pi, _ := abi.ParseSnpPlatformInfo(r.GetPlatformInfo())
	info, _ := abi.ParseSignerInfo(r.GetSignerInfo())
	return map[string]any{
		"version":           int(r.GetVersion()),
		"guest_svn":         int(r.GetGuestSvn()),
		"measurement":       hex.EncodeToString(r.GetMeasurement()),
		"host_data":         hex.EncodeToString(r.GetHostData()),
		"report_data":       hex.EncodeToString(r.GetReportData()),
		"chip_id":           hex.EncodeToString(r.GetChipId()),
		"family_id":         hex.EncodeToString(r.GetFamilyId()),
		"image_id":          hex.EncodeToString(r.GetImageId()),
		"report_id":         hex.EncodeToString(r.GetReportId()),
		"report_id_ma":      hex.EncodeToString(r.GetReportIdMa()),
		"id_key_digest":     hex.EncodeToString(r.GetIdKeyDigest()),
		"author_key_digest": hex.EncodeToString(r.GetAuthorKeyDigest()),
		"author_key_en":     info.AuthorKeyEn,
		"mask_chip_id":      info.MaskChipKey,
		"vmpl":              int(r.GetVmpl()),
		"policy": map[string]any{
			"raw":               fmt.Sprintf("%#x", r.GetPolicy()),
			"abi_major":         int(pol.ABIMajor),
			"abi_minor":         int(pol.ABIMinor),
			"smt":               pol.SMT,
			"migrate_ma":        pol.MigrateMA,
			"debug":             pol.Debug,
			"single_socket":     pol.SingleSocket,
			"cxl_allowed":       pol.CXLAllowed,
			"mem_aes_256_xts":   pol.MemAES256XTS,
			"rapl_dis":          pol.RAPLDis,
			"ciphertext_hiding": pol.CipherTextHidingDRAM,
			"page_swap_disable": pol.PageSwapDisable,
		},
		"platform_info": map[string]any{
			"raw":                  fmt.Sprintf("%#x", r.GetPlatformInfo()),
			"smt_enabled":          pi.SMTEnabled,
			"tsme_enabled":         pi.TSMEEnabled,
			"ecc_enabled":          pi.ECCEnabled,
			"rapl_disabled":        pi.RAPLDisabled,
			"ciphertext_hiding":    pi.CiphertextHidingDRAMEnabled,
			"alias_check_complete": pi.AliasCheckComplete,
			"tio_enabled":          pi.TIOEnabled,
		},
		"reported_tcb":      tcbClaim(r.GetReportedTcb()),
		"committed_tcb":     tcbClaim(r.GetCommittedTcb()),
		"current_tcb":       tcbClaim(r.GetCurrentTcb()),
		"launch_tcb":        tcbClaim(r.GetLaunchTcb()),
		"current_version":   fmt.Sprintf("%d.%d.%d", r.GetCurrentMajor(), r.GetCurrentMinor(), r.GetCurrentBuild()),
		"committed_version": fmt.Sprintf("%d.%d.%d", r.GetCommittedMajor(), r.GetCommittedMinor(), r.GetCommittedBuild()),
	}
}

func tcbClaim(v uint64) map[string]any {
	p := kds.DecomposeTCBVersion(kds.TCBVersion(v))
	return map[string]any{
		"raw":        fmt.Sprintf("%#016x", v),
		"bootloader": int(p.BlSpl),
		"tee":        int(p.TeeSpl),
		"snp":        int(p.SnpSpl),
		"microcode":  int(p.UcodeSpl),
	}
}

// ParseCRLMode reads "require", "if-available" or "skip".
func ParseCRLMode(s string) (CRLMode, error) {
	switch s {
	case "require":
		return CRLRequire, nil
	case "if-available":
		return CRLIfAvailable, nil
	case "skip":
		return CRLSkip, nil
	}
	return 0, fmt.Errorf("CRL mode %q: want require, if-available or skip", s)
}

// LoadRoots reads extra root files (ASK/ASVK then ARK, PEM) for Options.ExtraRoots.
func LoadRoots(paths []string) ([]*trust.AMDRootCerts, error) {
	var out []*trust.AMDRootCerts
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("extra SNP root: %w", err)
		}
		r, err := ParseRoot(b)
		if err != nil {
			return nil, fmt.Errorf("extra SNP root %s: %w", p, err)
		}
		out = append(out, r)
	}
	return out, nil
}

package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"

	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	"github.com/cloak-containers/cloak/kbs/verifier/tdx"
)

// tdxExtraRoots, under --collateral, holds the PEM roots of emulated-tdx
// platforms to trust besides Intel's SGX root CA.
const tdxExtraRoots = "tdx/extra-roots.pem"

func init() { evidenceVerifiers["tdx"] = verifyTDXEvidence }

// verifyTDXEvidence checks a raw TDX quote or Trustee TDX evidence JSON
// offline. TCB info and QE identity must be in the --collateral directory;
// the PCK and root CA CRLs are checked when the PCK CRL is there too. There
// is no nonce offline: claim report_data shows what the quote carries.
func verifyTDXEvidence(ctx context.Context, in evidenceInput) (map[string]any, error) {
	if in.collateralDir == "" {
		return nil, unusableInput{errors.New("tdx: --collateral DIR is required: a quote is only verifiable with Intel's TCB info and QE identity (layout: docs/attestation.md)")}
	}
	quote, eventLog := in.data, []byte(nil)
	if strings.HasPrefix(strings.TrimSpace(string(in.data[:min(len(in.data), 16)])), "{") {
		var err error
		if quote, eventLog, err = tdx.ParseEvidence(in.data); err != nil {
			return nil, unusableInput{fmt.Errorf("--file: %w", err)}
		}
	}
	if _, err := tdx.ParseQuote(quote); err != nil {
		return nil, unusableInput{fmt.Errorf("--file: %w", err)}
	}
	o := tdx.Options{
		Collateral:        collateral.New(collateral.Options{Dir: in.collateralDir, Offline: true}),
		NoRevocationCheck: !hasPCKCRL(in.collateralDir),
		Now:               func() time.Time { return in.at },
	}
	var err error
	if o.ExtraRoots, err = loadCerts(filepath.Join(in.collateralDir, tdxExtraRoots)); err != nil {
		return nil, unusableInput{err}
	}
	v, err := tdx.New(o)
	if err != nil {
		return nil, unusableInput{err}
	}
	claims, err := v.VerifyQuote(ctx, quote, eventLog, nil, nil)
	var ce *verifier.CheckError
	if err != nil && errors.As(err, &ce) && strings.HasPrefix(ce.Detail, "malformed") {
		return nil, unusableInput{err}
	}
	if err == nil && o.NoRevocationCheck {
		claims["revocation"] = "not checked: put the PCK CRL and root CA CRL in --collateral"
	}
	return claims, err
}

func hasPCKCRL(dir string) bool {
	for _, ca := range []string{"platform", "processor"} {
		if p, err := collateral.OfflinePath(dir, pcs.PckCrlURL(ca)); err == nil {
			if _, err := os.Stat(p); err == nil {
				return true
			}
		}
	}
	return false
}

// loadCerts reads PEM certificates; a missing file gives none.
func loadCerts(path string) ([]*x509.Certificate, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return tdx.LoadRoots(path)
}

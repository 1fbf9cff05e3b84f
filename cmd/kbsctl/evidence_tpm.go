package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cloak-containers/cloak/kbs/verifier/tpm"
)

// TPM collateral under --collateral: tpm/ek-roots.pem and
// tpm/ek-intermediates.pem (PEM certificates of the EK CAs), tpm/trusted-aks/
// (the KBS's enrolled AKs, *.pub).
const (
	tpmEKRoots       = "tpm/ek-roots.pem"
	tpmEKIntermedias = "tpm/ek-intermediates.pem"
	tpmTrustedAKs    = "tpm/trusted-aks"
)

func init() { evidenceVerifiers["tpm"] = verifyTPMEvidence }

// verifyTPMEvidence checks Trustee-format TPM evidence JSON offline: quote
// signature by its AK, PCR digest, event log, and, with --collateral, the EK
// chain and AK enrolment. There is no nonce offline, so the quote is checked
// against the report data it carries (claim report_data shows it).
func verifyTPMEvidence(ctx context.Context, in evidenceInput) (map[string]any, error) {
	rd, err := tpm.QuotedReportData(in.data)
	if err != nil {
		return nil, unusableInput{fmt.Errorf("--file: %w", err)}
	}
	ak, err := tpm.EvidenceAK(in.data)
	if err != nil {
		return nil, unusableInput{fmt.Errorf("--file: %w", err)}
	}
	cfg := tpm.Config{Now: func() time.Time { return in.at }}
	akChecked := false
	if in.collateralDir != "" {
		if cfg.EKRoots, err = loadPool(filepath.Join(in.collateralDir, tpmEKRoots)); err != nil {
			return nil, unusableInput{err}
		}
		if cfg.EKIntermediates, err = loadPool(filepath.Join(in.collateralDir, tpmEKIntermedias)); err != nil {
			return nil, unusableInput{err}
		}
		if dir := filepath.Join(in.collateralDir, tpmTrustedAKs); dirExists(dir) {
			if cfg.TrustedAKs, err = tpm.LoadTrustedAKs(dir); err != nil {
				return nil, unusableInput{err}
			}
			akChecked = true
		}
	}
	if !akChecked {
		// Without the KBS's AK list, check the quote against the AK it
		// carries and say so.
		d, err := tpm.AKDigest(ak)
		if err != nil {
			return nil, unusableInput{err}
		}
		cfg.TrustedAKs = [][sha256.Size]byte{d}
	}
	v, err := tpm.New(cfg)
	if err != nil {
		return nil, unusableInput{err}
	}
	claims, err := v.Verify(ctx, in.data, rd, nil)
	if err != nil {
		return nil, err
	}
	if !akChecked {
		claims["ak_trust"] = "not checked: put the enrolled AKs in --collateral DIR/" + tpmTrustedAKs
	}
	return claims, nil
}

// loadPool reads PEM certificates; a missing file gives a nil pool.
func loadPool(path string) (*x509.CertPool, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return tpm.LoadCertPool(path)
}

func dirExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

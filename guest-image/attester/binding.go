package attester

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/tdx"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/tpm"
)

// InitdataMismatchError says the TEE report does not bind the initdata the
// host handed over: its HOST_DATA is not the document's digest. The host
// changed the initdata after launch (or launched with another one); using
// it would let the host choose the guest's KBS and policy.
type InitdataMismatchError struct {
	Source   string
	HostData [32]byte // from the report
	Initdata [32]byte // digest of the document received, fitted to 32 bytes
}

func (e *InitdataMismatchError) Error() string {
	return fmt.Sprintf("initdata refused: its digest %x differs from HOST_DATA %x in a fresh SEV-SNP report (%s); the host changed the initdata after launch, so restart the pod with the initdata it was launched with", e.Initdata, e.HostData, e.Source)
}

// checkBinding asks the guest's SEV-SNP source (hardware or the emulated SP)
// for a fresh report and compares its HOST_DATA with the initdata's digest. It
// returns the TEE cloak-aa must attest with: "snp" when there is a source,
// else "tpm" on a guest with a TPM and no TDX device, after bindTPM extended
// PCR 8 with the initdata digest, else "" (cloak-aa's default).
func checkBinding(ctx context.Context, initdata []byte, cfg config) (string, error) {
	if tee, err := checkTDXBinding(ctx, initdata, cfg); tee != "" || err != nil {
		return tee, err
	}
	src, err := snp.Detect(cfg.snp)
	if err != nil {
		return bindTPM(ctx, initdata, cfg)
	}
	var nonce [kbstypes.ReportDataSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", err
	}
	// Provider.Report checks that the report binds this fresh nonce, so an
	// old report cannot be replayed here.
	report, _, err := snp.New(src).Report(ctx, nonce)
	if err != nil {
		return "", fmt.Errorf("check initdata against the TEE report: %w", err)
	}
	hd, err := snp.HostData(report)
	if err != nil {
		return "", err
	}
	// HOST_DATA holds the document's digest under its own algorithm,
	// fitted to 32 bytes (kbstypes.InitdataDigest, FitDigest): what the
	// shim launched with and what the KBS will compare.
	_, digest, err := kbstypes.InitdataDigest(initdata)
	if err != nil {
		return "", fmt.Errorf("initdata: %w", err)
	}
	var want [32]byte
	copy(want[:], kbstypes.FitDigest(digest, len(want)))
	if hd != want {
		return "", &InitdataMismatchError{Source: src.Name(), HostData: hd, Initdata: want}
	}
	return kbstypes.TeeSNP, nil
}

// Where bindTPM looks for a TPM and a TDX guest device.
const (
	defaultTDXGuest = "/dev/tdx_guest"
	// pcrMarker, in the run directory (tmpfs: one boot), holds the
	// initdata digest PCR 8 was extended with.
	pcrMarker = "initdata-pcr8"
)

// tpmExtender extends the initdata PCR; *tpm.Provider in the guest.
type tpmExtender interface {
	ExtendInitdata(ctx context.Context, digest []byte) error
}

func openTPM(dev string) (tpmExtender, error) { return tpm.New(dev) }

// InitdataPCRError says PCR 8 already binds other initdata this boot: a
// PCR cannot be reset, so the KBS would refuse every attestation.
type InitdataPCRError struct {
	Bound, Initdata []byte // digests
}

func (e *InitdataPCRError) Error() string {
	return fmt.Sprintf("initdata refused: TPM PCR %d already binds initdata %x this boot, not %x; a PCR cannot be reset, so restart the pod VM to use other initdata", tpm.InitdataPCR, e.Bound, e.Initdata)
}

// bindTPM extends PCR 8 with the initdata digest (the document's own
// algorithm, as the KBS computes it) once per boot and returns "tpm", when
// this guest has a TPM and no TDX device; "" when it has no TPM. Later
// calls with the same initdata do not extend again (the KBS expects PCR 8 =
// extend(0, digest)); other initdata is refused.
func bindTPM(ctx context.Context, initdata []byte, cfg config) (string, error) {
	dev, tdx := cfg.tpmDevice, cfg.tdxDevice
	if dev == "" {
		dev = tpm.DefaultDevice
	}
	if tdx == "" {
		tdx = defaultTDXGuest
	}
	if _, err := os.Stat(tdx); err == nil {
		return "", nil
	}
	if _, err := os.Stat(dev); err != nil {
		return "", nil
	}
	// What the KBS computes from the init-data cloak-aa sends.
	_, digest, err := kbstypes.InitdataDigest(initdata)
	if err != nil {
		return "", err
	}
	marker := filepath.Join(cfg.runDir, pcrMarker)
	bound, err := os.ReadFile(marker)
	switch {
	case err == nil && bytes.Equal(bound, pcrPending):
		return "", fmt.Errorf("initdata refused: an earlier extension of TPM PCR %d failed this boot, so the PCR's value is unknown; restart the pod VM", tpm.InitdataPCR)
	case err == nil && bytes.Equal(bound, digest):
		return kbstypes.TeeTPM, nil
	case err == nil:
		return "", &InitdataPCRError{Bound: bound, Initdata: digest}
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("read the PCR %d marker: %w", tpm.InitdataPCR, err)
	}
	open := cfg.openTPM
	if open == nil {
		open = openTPM
	}
	t, err := open(dev)
	if err != nil {
		return "", fmt.Errorf("bind initdata to the TPM: %w", err)
	}
	// Pending first: after a failure the PCR may or may not have been
	// extended, and extending it again would not help either way.
	if err := os.MkdirAll(cfg.runDir, 0o700); err != nil {
		return "", fmt.Errorf("attestation agent run directory: %w", err)
	}
	if err := os.WriteFile(marker, pcrPending, 0o600); err != nil {
		return "", fmt.Errorf("write the PCR %d marker: %w", tpm.InitdataPCR, err)
	}
	if err := t.ExtendInitdata(ctx, digest); err != nil {
		return "", fmt.Errorf("bind initdata to the TPM: %w", err)
	}
	if err := os.WriteFile(marker, digest, 0o600); err != nil {
		return "", fmt.Errorf("write the PCR %d marker: %w", tpm.InitdataPCR, err)
	}
	return kbstypes.TeeTPM, nil
}

// pcrPending marks an extension of PCR 8 that started and did not succeed.
var pcrPending = []byte("pending")

// tdxProbeTimeout bounds the question which emulated platform serves the
// cloak.sp port; both answer in milliseconds.
const tdxProbeTimeout = 3 * time.Second

// MRConfigIDMismatchError says a fresh TDX quote's MRCONFIGID is not the
// initdata's digest: the host launched the TD with other initdata.
type MRConfigIDMismatchError struct {
	Source     string
	MRConfigID [tdx.MRConfigIDSize]byte // from the quote
	Initdata   [tdx.MRConfigIDSize]byte // digest of the document received, fitted to 48 bytes
}

func (e *MRConfigIDMismatchError) Error() string {
	return fmt.Sprintf("initdata refused: its digest %x differs from MRCONFIGID %x in a fresh TDX quote (%s); the host changed the initdata after launch, so restart the pod with the initdata it was launched with", e.Initdata, e.MRConfigID, e.Source)
}

// checkTDXBinding asks the guest's TDX quote source (hardware or the
// emulated platform on cloak.sp) for a fresh quote and compares its
// MRCONFIGID with the initdata's digest. It returns "tdx" when they match,
// "" without error when this guest has no TDX source.
func checkTDXBinding(ctx context.Context, initdata []byte, cfg config) (string, error) {
	src, err := tdx.Detect(ctx, tdx.Paths{TdxGuest: cfg.tdxDevice, EmulatedSP: cfg.snp.EmulatedSP, ProbeTimeout: tdxProbeTimeout})
	if err != nil {
		return "", nil
	}
	var nonce [kbstypes.ReportDataSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", err
	}
	// Provider.Quote checks that the quote binds this fresh nonce.
	quote, err := tdx.New(src, tdx.Paths{}).Quote(ctx, nonce)
	if err != nil {
		return "", fmt.Errorf("check initdata against the TEE quote: %w", err)
	}
	got, err := tdx.MRConfigID(quote)
	if err != nil {
		return "", err
	}
	_, digest, err := kbstypes.InitdataDigest(initdata)
	if err != nil {
		return "", fmt.Errorf("initdata: %w", err)
	}
	want := [tdx.MRConfigIDSize]byte(kbstypes.FitDigest(digest, tdx.MRConfigIDSize))
	if got != want {
		return "", &MRConfigIDMismatchError{Source: src.Name(), MRConfigID: got, Initdata: want}
	}
	return kbstypes.TeeTDX, nil
}

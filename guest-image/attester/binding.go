package attester

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"

	"github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
	"github.com/cloak-containers/cloak/kbstypes"
)

// InitdataMismatchError says the TEE report does not bind the initdata the
// host handed over: its HOST_DATA is not sha256 of the document. The host
// changed the initdata after launch (or launched with another one); using
// it would let the host choose the guest's KBS and policy.
type InitdataMismatchError struct {
	Source   string
	HostData [32]byte // from the report
	Initdata [32]byte // sha256 of the document received
}

func (e *InitdataMismatchError) Error() string {
	return fmt.Sprintf("initdata refused: its sha256 %x differs from HOST_DATA %x in a fresh SEV-SNP report (%s); the host changed the initdata after launch, so restart the pod with the initdata it was launched with", e.Initdata, e.HostData, e.Source)
}

// checkBinding asks the guest's SEV-SNP source (hardware or the emulated SP)
// for a fresh report and compares its HOST_DATA with sha256(initdata). It
// returns the TEE cloak-aa must attest with: "snp" when there is a source,
// "" (cloak-aa's default) when this guest has no SNP at all.
func checkBinding(ctx context.Context, initdata []byte, paths snp.Paths) (string, error) {
	src, err := snp.Detect(paths)
	if err != nil {
		return "", nil
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
	if want := sha256.Sum256(initdata); hd != want {
		return "", &InitdataMismatchError{Source: src.Name(), HostData: hd, Initdata: want}
	}
	return kbstypes.TeeSNP, nil
}

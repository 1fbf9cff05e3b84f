// Package evidence defines how the attestation agent obtains TEE evidence.
// Each TEE (sample, and later snp, tdx, tpm, emulated) is a sibling package
// implementing Provider; package detect picks one by name.
package evidence

import (
	"context"
	"encoding/json"
)

// Provider produces evidence of one TEE type.
type Provider interface {
	// Tee is the TEE name as in Trustee's kbs-types (kbstypes.TeeSample, ...).
	Tee() string
	// Evidence returns the TEE's evidence document binding reportData, which
	// must be exactly kbstypes.ReportDataSize bytes.
	Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error)
}

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
	// Evidence returns the TEE's evidence document binding reportData, at
	// most kbstypes.ReportDataSize bytes; for the KBS it is the 48-byte
	// kbstypes.RuntimeDataDigest. As guest-components' attesters do, each TEE
	// fits it into its own field: snp and tdx zero-pad it to 64 bytes
	// (kbstypes.PadReportData), tpm cuts it to 32 (kbstypes.TPMReportData),
	// sample carries it unchanged.
	Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error)
}

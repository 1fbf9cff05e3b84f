// Package detect chooses the evidence provider for the TEE the agent runs
// in: by name (sample, snp, tdx, tpm), or "auto", which probes the guest's
// devices in the order of AutoOrder.
package detect

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/tdx"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/tpm"
)

// Options configures providers. Fields apply only to the TEE they name.
type Options struct {
	// SampleSVN is the svn the sample TEE reports ("" = sample.DefaultSVN).
	SampleSVN string
}

var constructors = map[string]func(Options) (evidence.Provider, error){
	kbstypes.TeeSample: func(o Options) (evidence.Provider, error) { return sample.New(o.SampleSVN), nil },
	// snp: configfs-tsm, else /dev/sev-guest, else the emulated SP port.
	kbstypes.TeeSNP: func(Options) (evidence.Provider, error) {
		src, err := snp.Detect(snp.Paths{})
		if err != nil {
			return nil, err
		}
		return snp.New(src), nil
	},
	// tdx: configfs-tsm, else /dev/tdx_guest, else the emulated port when
	// it serves the emulated TDX platform.
	kbstypes.TeeTDX: func(Options) (evidence.Provider, error) {
		src, err := tdx.Detect(context.Background(), tdx.Paths{})
		if err != nil {
			return nil, err
		}
		return tdx.New(src, tdx.Paths{}), nil
	},
	// tpm: /dev/tpmrm0, the kernel's TPM resource manager.
	kbstypes.TeeTPM: func(Options) (evidence.Provider, error) { return tpm.New("") },
}

// Auto names the TEE that New detects.
const Auto = "auto"

// AutoOrder is the order "auto" probes: a confidential VM's own hardware
// first (SEV-SNP, then TDX: each through configfs-tsm, its device, or the
// emulated platform's port), then a TPM (a vTPM beside no TEE), and the
// unsigned sample TEE when there is none of them, which the KBS's default
// policies refuse.
var AutoOrder = []string{kbstypes.TeeSNP, kbstypes.TeeTDX, kbstypes.TeeTPM, kbstypes.TeeSample}

// Names lists the TEE names New accepts, sorted, then "auto".
func Names() []string {
	names := make([]string, 0, len(constructors)+1)
	for n := range constructors {
		names = append(names, n)
	}
	slices.Sort(names)
	return append(names, Auto)
}

// Detect returns the first provider of AutoOrder that this guest can open,
// and why each one before it could not.
func Detect(opts Options) (evidence.Provider, []string, error) {
	var skipped []string
	for _, tee := range AutoOrder {
		p, err := constructors[tee](opts)
		if err == nil {
			return p, skipped, nil
		}
		skipped = append(skipped, fmt.Sprintf("%s: %v", tee, err))
	}
	return nil, skipped, fmt.Errorf("no evidence provider can be opened here: %s", strings.Join(skipped, "; "))
}

// New returns the provider for the TEE named tee ("auto": Detect).
func New(tee string, opts Options) (evidence.Provider, error) {
	if tee == Auto {
		p, _, err := Detect(opts)
		return p, err
	}
	c, ok := constructors[tee]
	if !ok {
		return nil, fmt.Errorf("unknown TEE %q: this agent supports %s", tee, strings.Join(Names(), ", "))
	}
	p, err := c(opts)
	if err != nil {
		return nil, fmt.Errorf("open %s evidence provider: %w", tee, err)
	}
	return p, nil
}

// Package detect chooses the evidence provider for the TEE the agent runs
// in. Today only the unsigned "sample" TEE exists; hardware providers (snp,
// tdx, tpm) and the emulated platform register here as they are added, with
// auto-detection from the guest's devices.
package detect

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/tpm"
	"github.com/cloak-containers/cloak/kbstypes"
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
	// tpm: /dev/tpmrm0, the kernel's TPM resource manager.
	kbstypes.TeeTPM: func(Options) (evidence.Provider, error) { return tpm.New("") },
}

// Names lists the TEE names New accepts, sorted.
func Names() []string {
	names := make([]string, 0, len(constructors))
	for n := range constructors {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// New returns the provider for the TEE named tee.
func New(tee string, opts Options) (evidence.Provider, error) {
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

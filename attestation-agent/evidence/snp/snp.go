// Package snp produces AMD SEV-SNP evidence in the format Trustee's
// attesters send and its verifiers parse (tee "snp"). Reports come from,
// in this order:
//
//  1. configfs-tsm (/sys/kernel/config/tsm/report, provider sev_guest),
//  2. the sev-guest device (/dev/sev-guest, extended report ioctl),
//  3. Cloak's emulated SP on the virtio-serial port cloak.sp (CI and
//     laptops; see emulated/snp). Its reports chain to a test-only
//     root that a KBS trusts only when told to.
package snp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/google/go-sev-guest/abi"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Source returns a raw ATTESTATION_REPORT binding reportData and the
// extended report's certificate table (GHCB GUID table; empty when the
// platform has none).
type Source interface {
	Name() string
	Report(ctx context.Context, reportData [abi.ReportDataSize]byte) (report, certTable []byte, err error)
}

// Paths where the sources are found; tests point them elsewhere.
type Paths struct {
	ConfigfsTSM string // default /sys/kernel/config/tsm/report
	SevPlatform string // default /sys/devices/platform/sev-guest
	SevGuest    string // default /dev/sev-guest
	EmulatedSP  string // default /dev/virtio-ports/cloak.sp
}

// Default device paths.
const (
	DefaultConfigfsTSM = "/sys/kernel/config/tsm/report"
	DefaultSevGuest    = "/dev/sev-guest"
	DefaultSevPlatform = "/sys/devices/platform/sev-guest"
	// EmulatedPortName is the virtio-serial port of the emulated SP.
	EmulatedPortName  = "cloak.sp"
	DefaultEmulatedSP = "/dev/virtio-ports/" + EmulatedPortName
)

func (p Paths) withDefaults() Paths {
	if p.ConfigfsTSM == "" {
		p.ConfigfsTSM = DefaultConfigfsTSM
	}
	if p.SevPlatform == "" {
		p.SevPlatform = DefaultSevPlatform
	}
	if p.SevGuest == "" {
		p.SevGuest = DefaultSevGuest
	}
	if p.EmulatedSP == "" {
		p.EmulatedSP = DefaultEmulatedSP
	}
	return p
}

// Detect returns the first source present in this guest, or an error that
// lists what was looked for.
func Detect(p Paths) (Source, error) {
	p = p.withDefaults()
	if configfsSNP(p) {
		return configfsSource{}, nil
	}
	if exists(p.SevGuest) {
		return sevGuestSource{path: p.SevGuest}, nil
	}
	if exists(p.EmulatedSP) {
		return &PortSource{Path: p.EmulatedSP}, nil
	}
	return nil, fmt.Errorf("no SEV-SNP report source in this guest: looked for %s (sev_guest provider), %s and the emulated SP port %s", p.ConfigfsTSM, p.SevGuest, p.EmulatedSP)
}

// Available reports whether this guest can produce SNP evidence.
func Available(p Paths) bool {
	_, err := Detect(p)
	return err == nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Provider is the evidence.Provider of tee "snp".
type Provider struct {
	src Source
}

// New returns a provider reading reports from src.
func New(src Source) *Provider { return &Provider{src: src} }

// Tee returns kbstypes.TeeSNP.
func (p *Provider) Tee() string { return kbstypes.TeeSNP }

// Source is where the provider's reports come from.
func (p *Provider) Source() Source { return p.src }

// Evidence returns Trustee's SNP evidence JSON for reportData.
func (p *Provider) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	rd, err := kbstypes.PadReportData(reportData)
	if err != nil {
		return nil, fmt.Errorf("snp evidence: %w", err)
	}
	report, certs, err := p.Report(ctx, [abi.ReportDataSize]byte(rd))
	if err != nil {
		return nil, err
	}
	return EncodeEvidence(report, certs)
}

// Report returns a fresh raw report (checked to bind reportData) and the
// certificate table.
func (p *Provider) Report(ctx context.Context, reportData [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	report, certs, err := p.src.Report(ctx, reportData)
	if err != nil {
		return nil, nil, fmt.Errorf("snp report from %s: %w", p.src.Name(), err)
	}
	if len(report) != abi.ReportSize {
		return nil, nil, fmt.Errorf("snp report from %s is %d bytes, want %d", p.src.Name(), len(report), abi.ReportSize)
	}
	// A report for other report data is a replay or a mix-up, never
	// evidence for this request.
	if got := report[reportDataOffset : reportDataOffset+abi.ReportDataSize]; string(got) != string(reportData[:]) {
		return nil, nil, fmt.Errorf("snp report from %s binds other report data than requested", p.src.Name())
	}
	return report, certs, nil
}

// Offsets in the ATTESTATION_REPORT (SEV-SNP firmware ABI, table 22).
const (
	reportDataOffset = 0x50
	hostDataOffset   = 0xC0
)

// HostData returns the HOST_DATA field of a raw report.
func HostData(report []byte) ([abi.HostDataSize]byte, error) {
	if len(report) != abi.ReportSize {
		return [abi.HostDataSize]byte{}, fmt.Errorf("snp report is %d bytes, want %d", len(report), abi.ReportSize)
	}
	return [abi.HostDataSize]byte(report[hostDataOffset : hostDataOffset+abi.HostDataSize]), nil
}

// Package tdx produces Intel TDX evidence in the format Trustee's TDX
// attester sends and its verifier parses (tee "tdx"):
//
//	{"quote": "<DCAP quote, base64>", "cc_eventlog": "<CCEL, base64>"}
//
// cc_eventlog is present when the firmware published a CC event log (ACPI
// CCEL table). Quotes come from, in this order:
//
//  1. configfs-tsm (/sys/kernel/config/tsm/report, provider tdx_guest),
//  2. the tdx-guest device (/dev/tdx_guest, GET_QUOTE ioctl),
//  3. Cloak's emulated quoting service on the virtio-serial port cloak.sp
//     (CI and laptops; see emulated/tdx), when it answers PLATFORM with
//     "tdx" (the same port serves the emulated SEV-SNP SP otherwise). Its
//     quotes chain to a test-only root a KBS trusts only when told to.
package tdx

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Source returns a raw DCAP quote binding reportData.
type Source interface {
	Name() string
	Quote(ctx context.Context, reportData [kbstypes.ReportDataSize]byte) ([]byte, error)
}

// Paths where the sources are found; tests point them elsewhere.
type Paths struct {
	ConfigfsTSM string // default /sys/kernel/config/tsm/report
	TdxGuest    string // default /dev/tdx_guest
	EmulatedSP  string // default /dev/virtio-ports/cloak.sp
	CCEL        string // default /sys/firmware/acpi/tables/data/CCEL
	// ProbeTimeout bounds Detect's PLATFORM question to the emulated port
	// (0: the port's request timeout, 10 s).
	ProbeTimeout time.Duration
}

// Default paths.
const (
	DefaultConfigfsTSM = "/sys/kernel/config/tsm/report"
	DefaultTdxGuest    = "/dev/tdx_guest"
	// EmulatedPortName is the virtio-serial port of the emulated platform.
	EmulatedPortName  = "cloak.sp"
	DefaultEmulatedSP = "/dev/virtio-ports/" + EmulatedPortName
	DefaultCCEL       = "/sys/firmware/acpi/tables/data/CCEL"
)

func (p Paths) withDefaults() Paths {
	if p.ConfigfsTSM == "" {
		p.ConfigfsTSM = DefaultConfigfsTSM
	}
	if p.TdxGuest == "" {
		p.TdxGuest = DefaultTdxGuest
	}
	if p.EmulatedSP == "" {
		p.EmulatedSP = DefaultEmulatedSP
	}
	if p.CCEL == "" {
		p.CCEL = DefaultCCEL
	}
	return p
}

// Detect returns the first quote source present in this guest, or an error
// that lists what was looked for. Asking the emulated port which platform
// serves it takes one round trip.
func Detect(ctx context.Context, p Paths) (Source, error) {
	p = p.withDefaults()
	if isCharDevice(p.TdxGuest) {
		if exists(p.ConfigfsTSM) {
			return configfsSource{}, nil
		}
		return deviceSource{path: p.TdxGuest}, nil
	}
	if exists(p.EmulatedSP) {
		probe := &PortSource{Path: p.EmulatedSP, Timeout: p.ProbeTimeout}
		platform, err := probe.Platform(ctx)
		if err == nil && platform == "tdx" {
			return &PortSource{Path: p.EmulatedSP}, nil
		}
		if err == nil {
			err = fmt.Errorf("it serves %q", platform)
		}
		return nil, fmt.Errorf("no TDX quote source in this guest: %s is absent and the emulated port %s is no emulated TDX platform (%v)", p.TdxGuest, p.EmulatedSP, err)
	}
	return nil, fmt.Errorf("no TDX quote source in this guest: looked for %s (with configfs-tsm %s) and the emulated port %s", p.TdxGuest, p.ConfigfsTSM, p.EmulatedSP)
}

func isCharDevice(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Provider is the evidence.Provider of tee "tdx".
type Provider struct {
	src  Source
	ccel string
}

// New returns a provider reading quotes from src and the CC event log from
// paths.CCEL (default DefaultCCEL) when it exists.
func New(src Source, paths Paths) *Provider {
	return &Provider{src: src, ccel: paths.withDefaults().CCEL}
}

// Tee returns kbstypes.TeeTDX.
func (p *Provider) Tee() string { return kbstypes.TeeTDX }

// Source is where the provider's quotes come from.
func (p *Provider) Source() Source { return p.src }

// MaxEventLogSize bounds the CC event log read from the firmware table (the
// KBS's limit too).
const MaxEventLogSize = 1 << 20

// Evidence returns Trustee's TDX evidence JSON for reportData.
func (p *Provider) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	rd, err := kbstypes.PadReportData(reportData)
	if err != nil {
		return nil, fmt.Errorf("tdx evidence: %w", err)
	}
	quote, err := p.Quote(ctx, [kbstypes.ReportDataSize]byte(rd))
	if err != nil {
		return nil, err
	}
	ccel, err := readCCEL(p.ccel)
	if err != nil {
		return nil, err
	}
	return EncodeEvidence(quote, ccel)
}

// Quote returns a fresh raw quote, checked to bind reportData.
func (p *Provider) Quote(ctx context.Context, reportData [kbstypes.ReportDataSize]byte) ([]byte, error) {
	quote, err := p.src.Quote(ctx, reportData)
	if err != nil {
		return nil, fmt.Errorf("tdx quote from %s: %w", p.src.Name(), err)
	}
	got, err := field(quote, reportDataOffset, kbstypes.ReportDataSize)
	if err != nil {
		return nil, fmt.Errorf("tdx quote from %s: %w", p.src.Name(), err)
	}
	// A quote for other report data is a replay or a mix-up, never
	// evidence for this request.
	if string(got) != string(reportData[:]) {
		return nil, fmt.Errorf("tdx quote from %s binds other report data than requested", p.src.Name())
	}
	return quote, nil
}

func readCCEL(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tdx CC event log: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxEventLogSize+1))
	if err != nil {
		return nil, fmt.Errorf("tdx CC event log: %w", err)
	}
	if len(b) > MaxEventLogSize {
		return nil, fmt.Errorf("tdx CC event log %s is larger than %d bytes", path, MaxEventLogSize)
	}
	return b, nil
}

// EncodeEvidence renders a raw quote and an optional CC event log (nil: no
// "cc_eventlog" field) as Trustee's TDX evidence JSON.
func EncodeEvidence(quote, ccel []byte) (json.RawMessage, error) {
	ev := struct {
		Quote      string  `json:"quote"`
		CCEventLog *string `json:"cc_eventlog,omitempty"`
	}{Quote: base64.StdEncoding.EncodeToString(quote)}
	if ccel != nil {
		s := base64.StdEncoding.EncodeToString(ccel)
		ev.CCEventLog = &s
	}
	return json.Marshal(ev)
}

// Offsets in a DCAP v4 quote: the 48-byte header, then the TD quote body.
const (
	quoteHeaderSize  = 0x30
	mrConfigIDOffset = quoteHeaderSize + 0xB8
	reportDataOffset = quoteHeaderSize + 0x208
	// MRConfigIDSize is the size of MRCONFIGID.
	MRConfigIDSize = 48
)

// MRConfigID returns the MRCONFIGID field of a raw quote.
func MRConfigID(quote []byte) ([MRConfigIDSize]byte, error) {
	b, err := field(quote, mrConfigIDOffset, MRConfigIDSize)
	if err != nil {
		return [MRConfigIDSize]byte{}, err
	}
	return [MRConfigIDSize]byte(b), nil
}

func field(quote []byte, off, size int) ([]byte, error) {
	if len(quote) < off+size {
		return nil, fmt.Errorf("tdx quote is %d bytes, too short for a TD quote body", len(quote))
	}
	if v := int(quote[0]) | int(quote[1])<<8; v != 4 {
		return nil, fmt.Errorf("tdx quote version is %d, want 4", v)
	}
	return quote[off : off+size], nil
}

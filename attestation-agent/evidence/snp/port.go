package snp

import (
	"context"
	"io"
	"time"

	"github.com/google/go-sev-guest/abi"

	"github.com/cloak-containers/cloak/api/emulatedsp"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/spport"
)

// The emulated SP's line protocol is api/emulatedsp's REPORT command (the
// port itself is spport's).
const (
	// portName names the SP in errors.
	portName = "emulated SP"
)

// PortSource asks the emulated SP over a virtio-serial port.
type PortSource struct {
	Path string
	// Timeout bounds one request (0: 10 s).
	Timeout time.Duration
}

// Name implements Source.
func (s *PortSource) Name() string { return "emulated SP " + s.Path }

// Report implements Source.
func (s *PortSource) Report(ctx context.Context, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	p := spport.Port{Path: s.Path, Timeout: s.Timeout, Name: portName}
	payload, err := p.Ask(ctx, emulatedsp.CmdReport, emulatedsp.ReportArg(0, rd))
	if err != nil {
		return nil, nil, err
	}
	return emulatedsp.ParseReportPayload(payload)
}

// Exchange sends one request on rw and reads lines until the answer to it.
// Lines for other ids (answers to an earlier process's requests) are
// skipped.
func Exchange(rw io.ReadWriter, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	payload, err := spport.Exchange(rw, portName, emulatedsp.CmdReport, emulatedsp.ReportArg(0, rd))
	if err != nil {
		return nil, nil, err
	}
	return emulatedsp.ParseReportPayload(payload)
}

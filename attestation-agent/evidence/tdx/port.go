package tdx

import (
	"context"
	"time"

	"github.com/cloak-containers/cloak/api/emulatedsp"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/spport"
)

// The emulated platform's line protocol is api/emulatedsp's QUOTE and
// PLATFORM commands (the port itself is spport's).
const (
	// portName names the quoting service in errors.
	portName = "emulated TDX"
)

// PortSource asks the emulated quoting service over a virtio-serial port.
type PortSource struct {
	Path string
	// Timeout bounds one request (0: 10 s).
	Timeout time.Duration
}

// Name implements Source.
func (s *PortSource) Name() string { return "emulated TDX " + s.Path }

// Quote implements Source.
func (s *PortSource) Quote(ctx context.Context, rd [kbstypes.ReportDataSize]byte) ([]byte, error) {
	payload, err := s.port().Ask(ctx, emulatedsp.CmdQuote, emulatedsp.QuoteArg(rd))
	if err != nil {
		return nil, err
	}
	return emulatedsp.ParseQuotePayload(payload)
}

// Platform asks which emulated platform serves the port ("tdx" for the
// emulated TDX quoting service). The emulated SNP SP does not know the
// command; its refusal comes back as an error.
func (s *PortSource) Platform(ctx context.Context) (string, error) {
	payload, err := s.port().Ask(ctx, emulatedsp.CmdPlatform, "")
	return string(payload), err
}

func (s *PortSource) port() *spport.Port {
	return &spport.Port{Path: s.Path, Timeout: s.Timeout, Name: portName}
}

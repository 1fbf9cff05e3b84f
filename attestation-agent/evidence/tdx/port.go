package tdx

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/spport"
)

// The emulated platform's line protocol (host side:
// emulated/tdx/protocol.go; the port itself is spport's):
//
//	guest: PLATFORM <id>\n          SP: OK <id> tdx\n
//	guest: QUOTE <id> <128 hex>\n   SP: OK <id> <quote: base64>\n
//	SP:    ERR <id or -> <message>\n
const (
	// maxQuoteSize bounds a decoded quote (the KBS's limit).
	maxQuoteSize = 64 << 10
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
	payload, err := s.port().Ask(ctx, "QUOTE", hex.EncodeToString(rd[:]))
	if err != nil {
		return nil, err
	}
	if base64.StdEncoding.DecodedLen(len(payload)) > maxQuoteSize+3 {
		return nil, fmt.Errorf("emulated TDX quote is longer than %d bytes", maxQuoteSize)
	}
	quote, err := base64.StdEncoding.AppendDecode(nil, payload)
	if err != nil {
		return nil, fmt.Errorf("emulated TDX quote: %v", err)
	}
	return quote, nil
}

// Platform asks which emulated platform serves the port ("tdx" for the
// emulated TDX quoting service). The emulated SNP SP does not know the
// command; its refusal comes back as an error.
func (s *PortSource) Platform(ctx context.Context) (string, error) {
	payload, err := s.port().Ask(ctx, "PLATFORM", "")
	return string(payload), err
}

func (s *PortSource) port() *spport.Port {
	return &spport.Port{Path: s.Path, Timeout: s.Timeout, Name: portName}
}

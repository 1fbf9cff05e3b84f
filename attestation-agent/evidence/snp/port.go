package snp

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/go-sev-guest/abi"

	"github.com/cloak-containers/cloak/attestation-agent/evidence/spport"
)

// The emulated SP's line protocol (host side: emulated/snp/protocol.go;
// the port itself is spport's):
//
//	guest: REPORT <id> <vmpl> <report data: 128 hex digits>\n
//	SP:    OK <id> <report: base64> <cert table: base64>\n
//	SP:    ERR <id or -> <message>\n
const (
	cmdReport = "REPORT"
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
	payload, err := p.Ask(ctx, cmdReport, reportArg(rd))
	if err != nil {
		return nil, nil, err
	}
	return parsePayload(payload)
}

// Exchange sends one request on rw and reads lines until the answer to it.
// Lines for other ids (answers to an earlier process's requests) are
// skipped.
func Exchange(rw io.ReadWriter, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	payload, err := spport.Exchange(rw, portName, cmdReport, reportArg(rd))
	if err != nil {
		return nil, nil, err
	}
	return parsePayload(payload)
}

// reportArg asks for a report at VMPL 0 binding rd.
func reportArg(rd [abi.ReportDataSize]byte) string { return "0 " + hex.EncodeToString(rd[:]) }

// parsePayload parses the payload of an OK answer.
func parsePayload(payload []byte) (report, certs []byte, err error) {
	parts := bytes.Split(payload, []byte{' '})
	if len(parts) != 2 {
		return nil, nil, errors.New("emulated SP answer: want a report and a certificate table")
	}
	b64 := base64.StdEncoding
	if report, err = b64.AppendDecode(nil, parts[0]); err != nil || len(report) != abi.ReportSize {
		return nil, nil, fmt.Errorf("emulated SP report: %d bytes (%v), want %d", len(report), err, abi.ReportSize)
	}
	if certs, err = b64.AppendDecode(nil, parts[1]); err != nil {
		return nil, nil, fmt.Errorf("emulated SP certificate table: %v", err)
	}
	return report, certs, nil
}

package tdx

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tdx-guest/abi"

	emulatedport "github.com/cloak-containers/cloak/emulated/port"
)

// The quoting service speaks the line protocol of the emulated SEV-SNP SP
// (emulated/snp/protocol.go) on the same cloak.sp port, with its own
// commands: one line per request and per response, so that a garbled or
// partial line costs one error answer and nothing more.
//
//	guest: PLATFORM <id>\n
//	SP:    OK <id> tdx\n
//	guest: QUOTE <id> <report data: 128 hex digits>\n
//	SP:    OK <id> <quote: base64>\n
//	SP:    ERR <id or -> <message>\n
//
// <id> is 1-32 letters or digits chosen by the guest. PLATFORM lets a guest
// tell which emulated platform serves the port: the emulated SNP SP answers
// it with ERR. The line loop is emulated/port's; the guest's copy of
// this format is attestation-agent/evidence/tdx (guest code cannot import
// host code).
const (
	// MaxRequestLine bounds a request line, newline included.
	MaxRequestLine = 256
	// PlatformName is the PLATFORM answer.
	PlatformName = "tdx"
)

// Request commands.
const (
	CmdQuote    = "QUOTE"
	CmdPlatform = "PLATFORM"
)

// Request is a parsed request line.
type Request struct {
	Cmd        string
	ID         string
	ReportData [abi.ReportDataSize]byte // QUOTE only
}

// ParseRequest parses one request line (without its newline). The guest is
// untrusted: every field is checked and nothing is allocated beyond the
// line's size.
func ParseRequest(line []byte) (Request, error) {
	var req Request
	if len(line) >= MaxRequestLine {
		return req, fmt.Errorf("request is %d bytes, limit %d", len(line), MaxRequestLine-1)
	}
	f := bytes.Split(line, []byte{' '})
	if len(f) < 2 {
		return req, errors.New(`want "QUOTE <id> <128 hex digits>" or "PLATFORM <id>"`)
	}
	if !emulatedport.ValidID(f[1]) {
		return req, fmt.Errorf("request id: want 1 to %d letters or digits", emulatedport.MaxIDLen)
	}
	req.Cmd, req.ID = string(f[0]), string(f[1])
	switch req.Cmd {
	case CmdPlatform:
		if len(f) != 2 {
			return req, errors.New(`want "PLATFORM <id>"`)
		}
	case CmdQuote:
		if len(f) != 3 {
			return req, errors.New(`want "QUOTE <id> <128 hex digits>"`)
		}
		if len(f[2]) != 2*abi.ReportDataSize {
			return req, fmt.Errorf("report data: want %d hex digits, got %d", 2*abi.ReportDataSize, len(f[2]))
		}
		if _, err := hex.Decode(req.ReportData[:], f[2]); err != nil {
			return req, fmt.Errorf("report data: %v", err)
		}
	case "REPORT":
		return req, errors.New("this emulated platform is TDX, not SEV-SNP: ask for a QUOTE (start the pod with emulated_platform = \"snp\" for SNP reports)")
	default:
		return req, fmt.Errorf("unknown command %q: want QUOTE or PLATFORM", truncate(f[0]))
	}
	return req, nil
}

func truncate(b []byte) []byte {
	if len(b) > 16 {
		return b[:16]
	}
	return b
}

// answer handles one line and returns the response line.
func (s *QuotingService) answer(line []byte) []byte {
	req, err := ParseRequest(line)
	if err != nil {
		return emulatedport.ErrorAnswer(line, err)
	}
	if req.Cmd == CmdPlatform {
		return fmt.Appendf(nil, "OK %s %s\n", req.ID, PlatformName)
	}
	quote, err := s.Quote(req.ReportData)
	if err != nil {
		return fmt.Appendf(nil, "ERR %s %s\n", req.ID, err)
	}
	return fmt.Appendf(nil, "OK %s %s\n", req.ID, base64.StdEncoding.EncodeToString(quote))
}

func (s *QuotingService) server() emulatedport.Server {
	return emulatedport.Server{Name: "emulated TDX quoting service", MaxLine: MaxRequestLine, Answer: s.answer}
}

// Serve answers requests on rw until it reads EOF or fails. An over-long
// line is skipped up to its newline and answered with an error.
func (s *QuotingService) Serve(rw io.ReadWriter) error { return s.server().Serve(rw) }

// Run connects to the host end of the VM's SP port (QEMU's chardev unix
// socket) and serves it until ctx ends, reconnecting whenever the
// connection drops. logf receives connection errors.
func (s *QuotingService) Run(ctx context.Context, socket string, logf func(format string, args ...any)) {
	s.server().Run(ctx, socket, logf)
}

package tdx

import (
	"context"
	"io"

	"github.com/cloak-containers/cloak/api/emulatedsp"
	emulatedport "github.com/cloak-containers/cloak/emulated/port"
)

// The quoting service speaks api/emulatedsp's QUOTE and PLATFORM commands
// on the same cloak.sp port as the emulated SEV-SNP SP; PLATFORM lets a
// guest tell which emulated platform serves the port (the SNP SP answers it
// with ERR). The line loop is emulated/port's.
const (
	// MaxRequestLine bounds a request line, newline included.
	MaxRequestLine = emulatedsp.MaxRequestLine
	// PlatformName is the PLATFORM answer.
	PlatformName = emulatedsp.PlatformTDX
)

// Request commands.
const (
	CmdQuote    = emulatedsp.CmdQuote
	CmdPlatform = emulatedsp.CmdPlatform
)

// Request is a parsed request line.
type Request = emulatedsp.Request

// ParseRequest parses one request line (without its newline): QUOTE and
// PLATFORM are served.
func ParseRequest(line []byte) (Request, error) {
	return emulatedsp.ParseRequest(line, CmdQuote, CmdPlatform)
}

// answer handles one line and returns the response line.
func (s *QuotingService) answer(line []byte) []byte {
	req, err := ParseRequest(line)
	if err != nil {
		return emulatedsp.ErrorAnswer(line, err)
	}
	if req.Cmd == CmdPlatform {
		return emulatedsp.OKLine(req.ID, PlatformName)
	}
	quote, err := s.Quote(req.ReportData)
	if err != nil {
		return emulatedsp.ErrLine(req.ID, err)
	}
	return emulatedsp.OKLine(req.ID, emulatedsp.QuotePayload(quote))
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

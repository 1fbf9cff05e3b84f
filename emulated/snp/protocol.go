package snp

import (
	"context"
	"io"

	"github.com/cloak-containers/cloak/api/emulatedsp"
	emulatedport "github.com/cloak-containers/cloak/emulated/port"
)

// The SP protocol is api/emulatedsp's REPORT command; the line loop is
// emulated/port's.
const (
	// MaxRequestLine bounds a request line, newline included.
	MaxRequestLine = emulatedsp.MaxRequestLine
	maxVMPL        = 3
)

// Request is a parsed request line.
type Request = emulatedsp.Request

// ParseRequest parses one request line (without its newline): only REPORT
// is served.
func ParseRequest(line []byte) (Request, error) {
	return emulatedsp.ParseRequest(line, emulatedsp.CmdReport)
}

// answer handles one line and returns the response line.
func (sp *SP) answer(line []byte) []byte {
	req, err := ParseRequest(line)
	if err != nil {
		return emulatedsp.ErrorAnswer(line, err)
	}
	report, err := sp.Report(req.ReportData, req.VMPL)
	if err != nil {
		return emulatedsp.ErrLine(req.ID, err)
	}
	return emulatedsp.OKLine(req.ID, emulatedsp.ReportPayload(report, sp.certs))
}

func (sp *SP) server() emulatedport.Server {
	return emulatedport.Server{Name: "emulated SNP SP", MaxLine: MaxRequestLine, Answer: sp.answer}
}

// Serve answers requests on rw until it reads EOF or fails. An over-long
// line is skipped up to its newline and answered with an error.
func (sp *SP) Serve(rw io.ReadWriter) error { return sp.server().Serve(rw) }

// Run connects to the host end of the VM's SP port (QEMU's chardev unix
// socket) and serves it until ctx ends, reconnecting whenever the
// connection drops. logf receives connection errors.
func (sp *SP) Run(ctx context.Context, socket string, logf func(format string, args ...any)) {
	sp.server().Run(ctx, socket, logf)
}

package snp

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/google/go-sev-guest/abi"

	emulatedport "github.com/cloak-containers/cloak/emulated/port"
)

// The SP protocol: one line per request and per response over the VM's
// virtio-serial port, so that a garbled or partial line (the port is one byte
// stream across guest processes) costs one error answer and nothing more.
//
//	guest: REPORT <id> <vmpl> <report data: 128 hex digits>\n
//	SP:    OK <id> <report: base64> <cert table: base64>\n
//	SP:    ERR <id or -> <message>\n
//
// <id> is 1-32 letters or digits chosen by the guest; it lets the guest drop
// answers to requests that are not its own. The line loop is
// emulated/port's; the guest's copy of this format is
// attestation-agent/evidence/snp (guest code cannot import host code).
const (
	// MaxRequestLine bounds a request line, newline included.
	MaxRequestLine = 256
	maxVMPL        = 3
)

// Request is a parsed request line.
type Request struct {
	ID         string
	VMPL       uint32
	ReportData [abi.ReportDataSize]byte
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
	if len(f) != 4 || string(f[0]) != "REPORT" {
		return req, errors.New(`want "REPORT <id> <vmpl> <128 hex digits>"`)
	}
	if !emulatedport.ValidID(f[1]) {
		return req, fmt.Errorf("request id: want 1 to %d letters or digits", emulatedport.MaxIDLen)
	}
	req.ID = string(f[1])
	vmpl, err := strconv.ParseUint(string(f[2]), 10, 32)
	if err != nil || vmpl > maxVMPL || len(f[2]) != 1 {
		return req, fmt.Errorf("vmpl %q: want 0 to %d", f[2], maxVMPL)
	}
	req.VMPL = uint32(vmpl)
	if len(f[3]) != 2*abi.ReportDataSize {
		return req, fmt.Errorf("report data: want %d hex digits, got %d", 2*abi.ReportDataSize, len(f[3]))
	}
	if _, err := hex.Decode(req.ReportData[:], f[3]); err != nil {
		return req, fmt.Errorf("report data: %v", err)
	}
	return req, nil
}

// answer handles one line and returns the response line.
func (sp *SP) answer(line []byte) []byte {
	req, err := ParseRequest(line)
	if err != nil {
		return emulatedport.ErrorAnswer(line, err)
	}
	report, err := sp.Report(req.ReportData, req.VMPL)
	if err != nil {
		return fmt.Appendf(nil, "ERR %s %s\n", req.ID, err)
	}
	b64 := base64.StdEncoding
	return fmt.Appendf(nil, "OK %s %s %s\n", req.ID, b64.EncodeToString(report), b64.EncodeToString(sp.certs))
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

package emulatedsnp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/google/go-sev-guest/abi"
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
// answers to requests that are not its own. The guest's copy of this format
// is attestation-agent/evidence/snp (guest code cannot import host code).
const (
	// MaxRequestLine bounds a request line, newline included.
	MaxRequestLine = 256
	maxIDLen       = 32
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
	if !validID(f[1]) {
		return req, fmt.Errorf("request id: want 1 to %d letters or digits", maxIDLen)
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

func validID(b []byte) bool {
	if len(b) == 0 || len(b) > maxIDLen {
		return false
	}
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// answer handles one line and returns the response line.
func (sp *SP) answer(line []byte) []byte {
	req, err := ParseRequest(line)
	if err != nil {
		id := "-"
		if f := bytes.SplitN(line, []byte{' '}, 3); len(f) > 1 && validID(f[1]) {
			id = string(f[1])
		}
		return fmt.Appendf(nil, "ERR %s %s\n", id, err)
	}
	report, err := sp.Report(req.ReportData, req.VMPL)
	if err != nil {
		return fmt.Appendf(nil, "ERR %s %s\n", req.ID, err)
	}
	b64 := base64.StdEncoding
	return fmt.Appendf(nil, "OK %s %s %s\n", req.ID, b64.EncodeToString(report), b64.EncodeToString(sp.certs))
}

// Serve answers requests on rw until it reads EOF or fails. An over-long
// line is skipped up to its newline and answered with an error.
func (sp *SP) Serve(rw io.ReadWriter) error {
	br := bufio.NewReaderSize(rw, MaxRequestLine)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err != nil {
				return eofOK(err)
			}
			if _, err := fmt.Fprintf(rw, "ERR - request longer than %d bytes\n", MaxRequestLine-1); err != nil {
				return err
			}
			continue
		case err != nil:
			return eofOK(err)
		}
		if _, err := rw.Write(sp.answer(bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'}))); err != nil {
			return err
		}
	}
}

func eofOK(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// redialInterval is how often Run retries QEMU's socket.
const redialInterval = 50 * time.Millisecond

// Run connects to the host end of the VM's SP port (QEMU's chardev unix
// socket, QEMU being the server) and serves it until ctx ends, reconnecting
// whenever the connection drops (QEMU restarts nothing, but a dial can race
// QEMU's start). logf receives connection errors.
func (sp *SP) Run(ctx context.Context, socket string, logf func(format string, args ...any)) {
	var d net.Dialer
	for ctx.Err() == nil {
		conn, err := d.DialContext(ctx, "unix", socket)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(redialInterval):
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		if err := sp.Serve(conn); err != nil && ctx.Err() == nil {
			logf("emulated SNP SP on %s: %v", socket, err)
		}
		stop()
		conn.Close()
		select {
		case <-ctx.Done():
		case <-time.After(redialInterval):
		}
	}
}

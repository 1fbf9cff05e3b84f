// Package port serves the host end of the emulated TEE firmware's
// virtio-serial port (cloak.sp) for emulated/snp and emulated/tdx:
// one request line in, one answer line out, so that a garbled or partial
// line (the port is one byte stream across guest processes) costs one
// error answer and nothing more. Each platform parses its own requests
// and writes its own answers; the guest's side of the port is
// attestation-agent/evidence/spport (guest code cannot import host code).
package port

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// MaxIDLen bounds a request id: 1 to MaxIDLen letters or digits chosen by
// the guest, which let it drop answers to requests that are not its own.
const MaxIDLen = 32

// ValidID reports whether b is a well-formed request id.
func ValidID(b []byte) bool {
	if len(b) == 0 || len(b) > MaxIDLen {
		return false
	}
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// ErrorAnswer is the answer to a request line that did not parse: its id
// when the line has a valid one in second place, else "-".
func ErrorAnswer(line []byte, err error) []byte {
	id := "-"
	if f := bytes.SplitN(line, []byte{' '}, 3); len(f) > 1 && ValidID(f[1]) {
		id = string(f[1])
	}
	return fmt.Appendf(nil, "ERR %s %s\n", id, err)
}

// Server answers the request lines of one emulated platform.
type Server struct {
	// Name names the platform in Run's log lines ("emulated SNP SP").
	Name string
	// MaxLine bounds a request line, newline included.
	MaxLine int
	// Answer returns the answer line (newline included) to one request
	// line (without its newline).
	Answer func(line []byte) []byte
}

// Serve answers requests on rw until it reads EOF or fails. An over-long
// line is skipped up to its newline and answered with an error.
func (s Server) Serve(rw io.ReadWriter) error {
	br := bufio.NewReaderSize(rw, s.MaxLine)
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
			if _, err := fmt.Fprintf(rw, "ERR - request longer than %d bytes\n", s.MaxLine-1); err != nil {
				return err
			}
			continue
		case err != nil:
			return eofOK(err)
		}
		if _, err := rw.Write(s.Answer(bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'}))); err != nil {
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
func (s Server) Run(ctx context.Context, socket string, logf func(format string, args ...any)) {
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
		if err := s.Serve(conn); err != nil && ctx.Err() == nil {
			logf("%s on %s: %v", s.Name, socket, err)
		}
		stop()
		conn.Close()
		select {
		case <-ctx.Done():
		case <-time.After(redialInterval):
		}
	}
}

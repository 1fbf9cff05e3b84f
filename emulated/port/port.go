// Package port serves the host end of the emulated TEE firmware's
// virtio-serial port (cloak.sp) for emulated/snp and emulated/tdx:
// one request line in, one answer line out, so that a garbled or partial
// line (the port is one byte stream across guest processes) costs one
// error answer and nothing more. The lines are api/emulatedsp's; each
// platform parses its own requests and writes its own answers with it. The
// guest's side of the port is attestation-agent/evidence/spport.
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

// Package spport is the guest end of the emulated TEE firmware's
// virtio-serial port (/dev/virtio-ports/cloak.sp), shared by the emulated
// SEV-SNP and TDX evidence sources: one request line out, answer lines in
// until the one that carries the request's id. The host end is
// emulated/port (guest code cannot import host code); the commands are
// each platform's (attestation-agent/evidence/snp, .../tdx).
//
//	guest: <cmd> <id> [<arg>]\n
//	host:  OK <id> <payload>\n
//	host:  ERR <id or -> <message>\n
package spport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

const (
	// MaxLine bounds an answer line: an SNP report with three
	// certificates is about 8 KiB in base64, a TDX quote with its PCK
	// chain about 6 KiB.
	MaxLine = 64 << 10
	// DefaultTimeout bounds one request: the host answers in
	// milliseconds, so a silent port means nothing is attached.
	DefaultTimeout = 10 * time.Second
	// busyRetry is how long to wait for a port another process holds open
	// (a virtio-serial port has one opener at a time).
	busyRetry = 20 * time.Millisecond
)

// Port is the guest end of the port.
type Port struct {
	Path string
	// Timeout bounds one request (0: DefaultTimeout).
	Timeout time.Duration
	// Name names what serves the port in errors ("emulated SP").
	Name string
}

// Ask opens the port, sends cmd with a fresh id and arg (if not empty) and
// returns the payload of the OK answer to it.
func (p *Port) Ask(ctx context.Context, cmd, arg string) ([]byte, error) {
	timeout := p.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	f, err := p.open(ctx)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck // best effort wake-up
	defer stop()
	return Exchange(f, p.Name, cmd, arg)
}

// open opens the port, waiting while another process has it open.
func (p *Port) open(ctx context.Context) (*os.File, error) {
	for {
		f, err := os.OpenFile(p.Path, os.O_RDWR|syscall.O_NONBLOCK, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("open %s port: %w", p.Name, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s port %s stayed busy: %w", p.Name, p.Path, ctx.Err())
		case <-time.After(busyRetry):
		}
	}
}

// Exchange sends one request (cmd, a fresh id, arg if not empty) on rw and
// reads lines until the answer to it: the payload of an OK, or an error
// with the message of an ERR. Lines for other ids (answers to an earlier
// process's requests) are skipped. name names the server in errors.
func Exchange(rw io.ReadWriter, name, cmd, arg string) ([]byte, error) {
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(idb[:])
	req := cmd + " " + id
	if arg != "" {
		req += " " + arg
	}
	if _, err := io.WriteString(rw, req+"\n"); err != nil {
		return nil, fmt.Errorf("send to %s port: %w", name, err)
	}
	br := bufio.NewReaderSize(rw, 4096)
	for {
		line, err := readLine(br)
		if err != nil {
			return nil, fmt.Errorf("read %s answer: %w", name, err)
		}
		f := bytes.SplitN(line, []byte{' '}, 3)
		if len(f) < 3 || string(f[1]) != id {
			continue
		}
		switch string(f[0]) {
		case "ERR":
			return nil, fmt.Errorf("emulated platform refused %s: %s", cmd, f[2])
		case "OK":
			return f[2], nil
		}
	}
}

// readLine reads one line of at most MaxLine bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > MaxLine {
			return nil, fmt.Errorf("answer longer than %d bytes", MaxLine)
		}
		switch {
		case err == nil:
			return bytes.TrimSuffix(line, []byte{'\n'}), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded):
			return nil, fmt.Errorf("%w (is the VM started with the emulated platform's port?)", err)
		default:
			return nil, err
		}
	}
}

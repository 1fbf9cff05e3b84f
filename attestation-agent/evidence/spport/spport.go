// Package spport is the guest end of the emulated TEE firmware's
// virtio-serial port (/dev/virtio-ports/cloak.sp), shared by the emulated
// SEV-SNP and TDX evidence sources: one request line out, answer lines in
// until the one that carries the request's id. The lines are
// api/emulatedsp's, shared with the host end (emulated/port); the commands
// are each platform's (attestation-agent/evidence/snp, .../tdx).
package spport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/cloak-containers/cloak/api/emulatedsp"
)

const (
	// MaxLine bounds an answer line.
	MaxLine = emulatedsp.MaxAnswerLine
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
	id, err := emulatedsp.NewID()
	if err != nil {
		return nil, err
	}
	if _, err := rw.Write(emulatedsp.RequestLine(cmd, id, arg)); err != nil {
		return nil, fmt.Errorf("send to %s port: %w", name, err)
	}
	br := bufio.NewReaderSize(rw, 4096)
	for {
		line, err := readLine(br)
		if err != nil {
			return nil, fmt.Errorf("read %s answer: %w", name, err)
		}
		got, ok, rest, err := emulatedsp.ParseAnswer(line)
		if err != nil || got != id {
			continue // not an answer to this request
		}
		if !ok {
			return nil, fmt.Errorf("emulated platform refused %s: %s", cmd, rest)
		}
		return rest, nil
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

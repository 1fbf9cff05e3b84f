package tdx

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/cloak-containers/cloak/kbstypes"
)

// The emulated platform's line protocol (host side:
// shim/emulatedtdx/protocol.go):
//
//	guest: PLATFORM <id>\n          SP: OK <id> tdx\n
//	guest: QUOTE <id> <128 hex>\n   SP: OK <id> <quote: base64>\n
//	SP:    ERR <id or -> <message>\n
const (
	// maxResponseLine bounds an answer: a quote with its PEM PCK chain is
	// about 4 KiB, 6 KiB in base64.
	maxResponseLine = 64 << 10
	// maxQuoteSize bounds a decoded quote (the KBS's limit).
	maxQuoteSize = 64 << 10
	// portTimeout bounds one request: the service answers in
	// milliseconds, so a silent port means nothing is attached.
	portTimeout = 10 * time.Second
	// busyRetry is how long to wait for a port another process holds open
	// (a virtio-serial port has one opener at a time).
	busyRetry = 20 * time.Millisecond
)

// PortSource asks the emulated quoting service over a virtio-serial port.
type PortSource struct {
	Path string
	// Timeout bounds one request (0: 10 s).
	Timeout time.Duration
}

// Name implements Source.
func (s *PortSource) Name() string { return "emulated TDX " + s.Path }

// Quote implements Source.
func (s *PortSource) Quote(ctx context.Context, rd [kbstypes.ReportDataSize]byte) ([]byte, error) {
	var quote []byte
	err := s.exchange(ctx, "QUOTE", hex.EncodeToString(rd[:]), func(payload []byte) error {
		if base64.StdEncoding.DecodedLen(len(payload)) > maxQuoteSize+3 {
			return fmt.Errorf("emulated TDX quote is longer than %d bytes", maxQuoteSize)
		}
		var err error
		if quote, err = base64.StdEncoding.AppendDecode(nil, payload); err != nil {
			return fmt.Errorf("emulated TDX quote: %v", err)
		}
		return nil
	})
	return quote, err
}

// Platform asks which emulated platform serves the port ("tdx" for the
// emulated TDX quoting service). The emulated SNP SP does not know the
// command; its refusal comes back as an error.
func (s *PortSource) Platform(ctx context.Context) (string, error) {
	var name string
	err := s.exchange(ctx, "PLATFORM", "", func(payload []byte) error {
		name = string(payload)
		return nil
	})
	return name, err
}

func (s *PortSource) exchange(ctx context.Context, cmd, arg string, ok func(payload []byte) error) error {
	timeout := s.Timeout
	if timeout == 0 {
		timeout = portTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	f, err := s.open(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck // best effort wake-up
	defer stop()
	return Exchange(f, cmd, arg, ok)
}

// open opens the port, waiting while another process has it open.
func (s *PortSource) open(ctx context.Context) (*os.File, error) {
	for {
		f, err := os.OpenFile(s.Path, os.O_RDWR|syscall.O_NONBLOCK, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("open emulated TDX port: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("emulated TDX port %s stayed busy: %w", s.Path, ctx.Err())
		case <-time.After(busyRetry):
		}
	}
}

// Exchange sends one request (cmd, a fresh id, arg if not empty) on rw and
// reads lines until the answer to it, which it hands to ok. Lines for other
// ids (answers to an earlier process's requests) are skipped.
func Exchange(rw io.ReadWriter, cmd, arg string, ok func(payload []byte) error) error {
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return err
	}
	id := hex.EncodeToString(idb[:])
	req := cmd + " " + id
	if arg != "" {
		req += " " + arg
	}
	if _, err := io.WriteString(rw, req+"\n"); err != nil {
		return fmt.Errorf("send to emulated TDX port: %w", err)
	}
	br := bufio.NewReaderSize(rw, 4096)
	for {
		line, err := readLine(br)
		if err != nil {
			return fmt.Errorf("read emulated TDX answer: %w", err)
		}
		f := bytes.SplitN(line, []byte{' '}, 3)
		if len(f) < 3 || string(f[1]) != id {
			continue
		}
		switch string(f[0]) {
		case "ERR":
			return fmt.Errorf("emulated platform refused %s: %s", cmd, f[2])
		case "OK":
			return ok(f[2])
		}
	}
}

// readLine reads one line of at most maxResponseLine bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxResponseLine {
			return nil, fmt.Errorf("answer longer than %d bytes", maxResponseLine)
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

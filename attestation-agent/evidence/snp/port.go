package snp

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

	"github.com/google/go-sev-guest/abi"
)

// The emulated SP's line protocol (host side: shim/emulatedsnp/protocol.go):
//
//	guest: REPORT <id> <vmpl> <report data: 128 hex digits>\n
//	SP:    OK <id> <report: base64> <cert table: base64>\n
//	SP:    ERR <id or -> <message>\n
const (
	// maxResponseLine bounds an SP answer: a report and three
	// certificates in base64 are about 8 KiB.
	maxResponseLine = 64 << 10
	// portTimeout bounds one request: the SP answers in milliseconds, so
	// a silent port means no SP is attached.
	portTimeout = 10 * time.Second
	// busyRetry is how long to wait for a port another process holds open
	// (a virtio-serial port has one opener at a time).
	busyRetry = 20 * time.Millisecond
)

// PortSource asks the emulated SP over a virtio-serial port.
type PortSource struct {
	Path string
	// Timeout bounds one request (0: 10 s).
	Timeout time.Duration
}

// Name implements Source.
func (s *PortSource) Name() string { return "emulated SP " + s.Path }

// Report implements Source.
func (s *PortSource) Report(ctx context.Context, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	timeout := s.Timeout
	if timeout == 0 {
		timeout = portTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	f, err := s.open(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck // best effort wake-up
	defer stop()
	return Exchange(f, rd)
}

// open opens the port, waiting while another process has it open.
func (s *PortSource) open(ctx context.Context) (*os.File, error) {
	for {
		f, err := os.OpenFile(s.Path, os.O_RDWR|syscall.O_NONBLOCK, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("open emulated SP port: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("emulated SP port %s stayed busy: %w", s.Path, ctx.Err())
		case <-time.After(busyRetry):
		}
	}
}

// Exchange sends one request on rw and reads lines until the answer to it.
// Lines for other ids (answers to an earlier process's requests) are
// skipped.
func Exchange(rw io.ReadWriter, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, nil, err
	}
	id := hex.EncodeToString(idb[:])
	if _, err := fmt.Fprintf(rw, "REPORT %s 0 %s\n", id, hex.EncodeToString(rd[:])); err != nil {
		return nil, nil, fmt.Errorf("send to emulated SP: %w", err)
	}
	br := bufio.NewReaderSize(rw, 4096)
	for {
		line, err := readLine(br)
		if err != nil {
			return nil, nil, fmt.Errorf("read emulated SP answer: %w", err)
		}
		report, certs, mine, err := parseResponse(line, id)
		if mine {
			return report, certs, err
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
			return nil, fmt.Errorf("%w (is the VM started with the emulated SP port?)", err)
		default:
			return nil, err
		}
	}
}

// parseResponse parses an SP line; mine says whether it answers id.
func parseResponse(line []byte, id string) (report, certs []byte, mine bool, err error) {
	f := bytes.SplitN(line, []byte{' '}, 3)
	if len(f) < 3 || string(f[1]) != id {
		return nil, nil, false, nil
	}
	switch string(f[0]) {
	case "ERR":
		return nil, nil, true, fmt.Errorf("emulated SP refused the request: %s", f[2])
	case "OK":
	default:
		return nil, nil, false, nil
	}
	parts := bytes.Split(f[2], []byte{' '})
	if len(parts) != 2 {
		return nil, nil, true, errors.New("emulated SP answer: want a report and a certificate table")
	}
	b64 := base64.StdEncoding
	if report, err = b64.AppendDecode(nil, parts[0]); err != nil || len(report) != abi.ReportSize {
		return nil, nil, true, fmt.Errorf("emulated SP report: %d bytes (%v), want %d", len(report), err, abi.ReportSize)
	}
	if certs, err = b64.AppendDecode(nil, parts[1]); err != nil {
		return nil, nil, true, fmt.Errorf("emulated SP certificate table: %v", err)
	}
	return report, certs, true, nil
}

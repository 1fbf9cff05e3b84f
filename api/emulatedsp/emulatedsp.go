// Package emulatedsp is the wire contract of the emulated TEE firmware's
// virtio-serial port (cloak.sp): the line protocol that the host's test
// platforms (emulated/snp, emulated/tdx, framed by emulated/port) answer and
// the guest's evidence sources (attestation-agent/evidence/snp, .../tdx,
// framed by attestation-agent/evidence/spport) ask. One request line in, one
// answer line out, so that a garbled or partial line (the port is one byte
// stream across guest processes) costs one error answer and nothing more:
//
//	guest: REPORT <id> <vmpl> <report data: 128 hex digits>\n   (SEV-SNP)
//	SP:    OK <id> <report: base64> <cert table: base64>\n
//	guest: QUOTE <id> <report data: 128 hex digits>\n           (TDX)
//	SP:    OK <id> <quote: base64>\n
//	guest: PLATFORM <id>\n                                      (TDX; SNP answers ERR)
//	SP:    OK <id> tdx\n
//	SP:    ERR <id or -> <message>\n
//
// <id> is 1 to MaxIDLen letters or digits chosen by the guest; it lets the
// guest drop answers to requests that are not its own. Both sides import
// this package; it imports only the standard library.
package emulatedsp

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
)

const (
	// MaxIDLen bounds a request id.
	MaxIDLen = 32
	// MaxRequestLine bounds a request line, newline included.
	MaxRequestLine = 256
	// MaxAnswerLine bounds an answer line: an SNP report with three
	// certificates is about 8 KiB in base64, a TDX quote with its PCK
	// chain about 6 KiB.
	MaxAnswerLine = 64 << 10
	// MaxQuoteSize bounds a decoded TDX quote (the KBS's limit).
	MaxQuoteSize = 64 << 10
	// ReportDataSize is the size of the report data both TEEs bind.
	ReportDataSize = 64
	// SNPReportSize is the size of an SEV-SNP attestation report.
	SNPReportSize = 0x4a0
	// maxVMPL is the highest SEV-SNP VM privilege level.
	maxVMPL = 3
)

// Request commands and the PLATFORM answer of the TDX quoting service.
const (
	CmdReport   = "REPORT"
	CmdQuote    = "QUOTE"
	CmdPlatform = "PLATFORM"
	PlatformTDX = "tdx"
)

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

// NewID returns a fresh random request id (16 hex digits).
func NewID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// RequestLine is the line (newline included) asking cmd with id and arg
// (none when empty).
func RequestLine(cmd, id, arg string) []byte {
	line := cmd + " " + id
	if arg != "" {
		line += " " + arg
	}
	return []byte(line + "\n")
}

// OKLine is the answer line (newline included) carrying payload for id.
func OKLine(id string, payload string) []byte {
	return fmt.Appendf(nil, "OK %s %s\n", id, payload)
}

// ErrLine is the answer line (newline included) refusing id's request.
func ErrLine(id string, err error) []byte {
	return fmt.Appendf(nil, "ERR %s %s\n", id, err)
}

// ErrorAnswer is the answer to a request line that did not parse: its id
// when the line has a valid one in second place, else "-".
func ErrorAnswer(line []byte, err error) []byte {
	id := "-"
	if f := bytes.SplitN(line, []byte{' '}, 3); len(f) > 1 && ValidID(f[1]) {
		id = string(f[1])
	}
	return ErrLine(id, err)
}

// ParseAnswer splits an answer line (without its newline): ok is true for
// OK, false for ERR; rest is the payload or the message. A line that is
// neither, or has no id, gives an error: the guest skips it.
func ParseAnswer(line []byte) (id string, ok bool, rest []byte, err error) {
	f := bytes.SplitN(line, []byte{' '}, 3)
	if len(f) < 3 {
		return "", false, nil, errors.New(`want "OK <id> <payload>" or "ERR <id> <message>"`)
	}
	switch string(f[0]) {
	case "OK":
		return string(f[1]), true, f[2], nil
	case "ERR":
		return string(f[1]), false, f[2], nil
	}
	return "", false, nil, fmt.Errorf("answer kind %q: want OK or ERR", truncate(f[0]))
}

// Request is a parsed request line.
type Request struct {
	Cmd        string
	ID         string
	VMPL       uint32 // REPORT only
	ReportData [ReportDataSize]byte
}

// ParseRequest parses one request line (without its newline) for a
// platform that serves the commands in cmds. The guest is untrusted: every
// field is checked and nothing is allocated beyond the line's size.
func ParseRequest(line []byte, cmds ...string) (Request, error) {
	var req Request
	if len(line) >= MaxRequestLine {
		return req, fmt.Errorf("request is %d bytes, limit %d", len(line), MaxRequestLine-1)
	}
	f := bytes.Split(line, []byte{' '})
	if len(f) < 2 {
		return req, fmt.Errorf("want %s", usage(cmds))
	}
	if !ValidID(f[1]) {
		return req, fmt.Errorf("request id: want 1 to %d letters or digits", MaxIDLen)
	}
	req.Cmd, req.ID = string(f[0]), string(f[1])
	served := false
	for _, c := range cmds {
		served = served || c == req.Cmd
	}
	if !served {
		switch {
		case req.Cmd == CmdReport:
			return req, errors.New("this emulated platform is TDX, not SEV-SNP: ask for a QUOTE (start the pod with emulated_platform = \"snp\" for SNP reports)")
		case req.Cmd == CmdQuote || req.Cmd == CmdPlatform:
			return req, fmt.Errorf("this emulated platform is SEV-SNP: want %s", usage(cmds))
		}
		return req, fmt.Errorf("unknown command %q: want %s", truncate(f[0]), usage(cmds))
	}
	want := map[string]int{CmdReport: 4, CmdQuote: 3, CmdPlatform: 2}[req.Cmd]
	if len(f) != want {
		return req, fmt.Errorf("want %s", usage([]string{req.Cmd}))
	}
	if req.Cmd == CmdReport {
		vmpl, err := strconv.ParseUint(string(f[2]), 10, 32)
		if err != nil || vmpl > maxVMPL || len(f[2]) != 1 {
			return req, fmt.Errorf("vmpl %q: want 0 to %d", truncate(f[2]), maxVMPL)
		}
		req.VMPL = uint32(vmpl)
	}
	if req.Cmd == CmdReport || req.Cmd == CmdQuote {
		rd := f[len(f)-1]
		if len(rd) != 2*ReportDataSize {
			return req, fmt.Errorf("report data: want %d hex digits, got %d", 2*ReportDataSize, len(rd))
		}
		if _, err := hex.Decode(req.ReportData[:], rd); err != nil {
			return req, fmt.Errorf("report data: %v", err)
		}
	}
	return req, nil
}

func usage(cmds []string) string {
	var s []string
	for _, c := range cmds {
		switch c {
		case CmdReport:
			s = append(s, `"REPORT <id> <vmpl> <128 hex digits>"`)
		case CmdQuote:
			s = append(s, `"QUOTE <id> <128 hex digits>"`)
		case CmdPlatform:
			s = append(s, `"PLATFORM <id>"`)
		}
	}
	switch len(s) {
	case 0:
		return "a request"
	case 1:
		return s[0]
	}
	return fmt.Sprintf("%s or %s", s[0], s[1])
}

func truncate(b []byte) []byte {
	if len(b) > 16 {
		return b[:16]
	}
	return b
}

// ReportArg is REPORT's argument asking for a report at vmpl binding rd.
func ReportArg(vmpl uint32, rd [ReportDataSize]byte) string {
	return strconv.FormatUint(uint64(vmpl), 10) + " " + hex.EncodeToString(rd[:])
}

// QuoteArg is QUOTE's argument binding rd.
func QuoteArg(rd [ReportDataSize]byte) string { return hex.EncodeToString(rd[:]) }

// ReportPayload is the payload of REPORT's OK answer.
func ReportPayload(report, certs []byte) string {
	b64 := base64.StdEncoding
	return b64.EncodeToString(report) + " " + b64.EncodeToString(certs)
}

// ParseReportPayload parses the payload of REPORT's OK answer.
func ParseReportPayload(payload []byte) (report, certs []byte, err error) {
	parts := bytes.Split(payload, []byte{' '})
	if len(parts) != 2 {
		return nil, nil, errors.New("emulated SP answer: want a report and a certificate table")
	}
	b64 := base64.StdEncoding
	if report, err = b64.AppendDecode(nil, parts[0]); err != nil || len(report) != SNPReportSize {
		return nil, nil, fmt.Errorf("emulated SP report: %d bytes (%v), want %d", len(report), err, SNPReportSize)
	}
	if certs, err = b64.AppendDecode(nil, parts[1]); err != nil {
		return nil, nil, fmt.Errorf("emulated SP certificate table: %v", err)
	}
	return report, certs, nil
}

// QuotePayload is the payload of QUOTE's OK answer.
func QuotePayload(quote []byte) string { return base64.StdEncoding.EncodeToString(quote) }

// ParseQuotePayload parses the payload of QUOTE's OK answer.
func ParseQuotePayload(payload []byte) ([]byte, error) {
	if base64.StdEncoding.DecodedLen(len(payload)) > MaxQuoteSize+3 {
		return nil, fmt.Errorf("emulated TDX quote is longer than %d bytes", MaxQuoteSize)
	}
	quote, err := base64.StdEncoding.AppendDecode(nil, payload)
	if err != nil {
		return nil, fmt.Errorf("emulated TDX quote: %v", err)
	}
	return quote, nil
}

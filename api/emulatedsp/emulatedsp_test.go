package emulatedsp

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

// The exact bytes both sides put on the port: a change here breaks a guest
// built before it against a host built after it.
func TestLines(t *testing.T) {
	var rd [ReportDataSize]byte
	rd[0], rd[63] = 0xab, 0x01
	hexRD := hex.EncodeToString(rd[:])
	for _, c := range []struct{ got, want string }{
		{string(RequestLine(CmdReport, "x1", ReportArg(0, rd))), "REPORT x1 0 " + hexRD + "\n"},
		{string(RequestLine(CmdQuote, "x2", QuoteArg(rd))), "QUOTE x2 " + hexRD + "\n"},
		{string(RequestLine(CmdPlatform, "x3", "")), "PLATFORM x3\n"},
		{string(OKLine("x3", PlatformTDX)), "OK x3 tdx\n"},
		{string(OKLine("x1", ReportPayload([]byte{1, 2}, []byte{3}))), "OK x1 AQI= Aw==\n"},
		{string(ErrLine("x4", fmt.Errorf("no"))), "ERR x4 no\n"},
		{string(ErrorAnswer([]byte("REPORT bad/id 0"), fmt.Errorf("no"))), "ERR - no\n"},
		{string(ErrorAnswer([]byte("REPORT ok1 9"), fmt.Errorf("no"))), "ERR ok1 no\n"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestParseRequest(t *testing.T) {
	rd := strings.Repeat("0f", ReportDataSize)
	good := []struct {
		line string
		cmds []string
		want Request
	}{
		{"REPORT a1 2 " + rd, []string{CmdReport}, Request{Cmd: CmdReport, ID: "a1", VMPL: 2}},
		{"QUOTE b2 " + rd, []string{CmdQuote, CmdPlatform}, Request{Cmd: CmdQuote, ID: "b2"}},
		{"PLATFORM c3", []string{CmdQuote, CmdPlatform}, Request{Cmd: CmdPlatform, ID: "c3"}},
	}
	for _, g := range good {
		req, err := ParseRequest([]byte(g.line), g.cmds...)
		if err != nil {
			t.Fatalf("%q: %v", g.line, err)
		}
		if req.Cmd != g.want.Cmd || req.ID != g.want.ID || req.VMPL != g.want.VMPL {
			t.Errorf("%q: got %+v", g.line, req)
		}
		if g.want.Cmd != CmdPlatform && req.ReportData[0] != 0x0f {
			t.Errorf("%q: report data %x", g.line, req.ReportData[:2])
		}
	}
	bad := []struct {
		line string
		cmds []string
		want string
	}{
		{"REPORT a 4 " + rd, []string{CmdReport}, "vmpl"},
		{"REPORT a 00 " + rd, []string{CmdReport}, "vmpl"},
		{"REPORT a 0 " + rd[:10], []string{CmdReport}, "want 128 hex digits, got 10"},
		{"REPORT a 0 " + strings.Repeat("zz", ReportDataSize), []string{CmdReport}, "report data"},
		{"REPORT a/b 0 " + rd, []string{CmdReport}, "request id"},
		{"REPORT " + strings.Repeat("a", MaxIDLen+1) + " 0 " + rd, []string{CmdReport}, "request id"},
		{"QUOTE a " + rd, []string{CmdReport}, "is SEV-SNP"},
		{"REPORT a 0 " + rd, []string{CmdQuote, CmdPlatform}, "is TDX, not SEV-SNP"},
		{"PLATFORM a extra", []string{CmdQuote, CmdPlatform}, `want "PLATFORM <id>"`},
		{"HELLO a", []string{CmdReport}, `unknown command "HELLO"`},
		{"HELLO", []string{CmdReport}, "want"},
		{strings.Repeat("A", MaxRequestLine), []string{CmdReport}, "limit"},
	}
	for _, b := range bad {
		_, err := ParseRequest([]byte(b.line), b.cmds...)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%.40q: err = %v, want it to contain %q", b.line, err, b.want)
		}
	}
}

func TestParseAnswer(t *testing.T) {
	id, ok, rest, err := ParseAnswer([]byte("OK x1 AQI= Aw=="))
	if err != nil || id != "x1" || !ok || string(rest) != "AQI= Aw==" {
		t.Fatalf("OK: %q %v %q %v", id, ok, rest, err)
	}
	report, certs, err := ParseReportPayload(rest)
	if err == nil {
		t.Fatalf("a 2-byte report was accepted: %x %x", report, certs)
	}
	id, ok, rest, err = ParseAnswer([]byte("ERR - bad request"))
	if err != nil || id != "-" || ok || string(rest) != "bad request" {
		t.Fatalf("ERR: %q %v %q %v", id, ok, rest, err)
	}
	for _, line := range []string{"", "OK", "OK x1", "NO x1 y"} {
		if _, _, _, err := ParseAnswer([]byte(line)); err == nil {
			t.Errorf("%q accepted", line)
		}
	}
	full := bytes.Repeat([]byte{7}, SNPReportSize)
	report, certs, err = ParseReportPayload([]byte(ReportPayload(full, []byte("certs"))))
	if err != nil || !bytes.Equal(report, full) || string(certs) != "certs" {
		t.Fatalf("report payload round trip: %v", err)
	}
	quote, err := ParseQuotePayload([]byte(QuotePayload([]byte("quote"))))
	if err != nil || string(quote) != "quote" {
		t.Fatalf("quote payload round trip: %q %v", quote, err)
	}
	if _, err := ParseQuotePayload(bytes.Repeat([]byte("A"), MaxQuoteSize*2)); err == nil {
		t.Error("an over-long quote was accepted")
	}
}

// The host parses whatever a guest process writes on the port.
func FuzzParseRequest(f *testing.F) {
	rd := strings.Repeat("00", ReportDataSize)
	f.Add([]byte("REPORT a 0 " + rd))
	f.Add([]byte("REPORT 1 3 " + strings.Repeat("fF", ReportDataSize)))
	f.Add([]byte("QUOTE a " + rd))
	f.Add([]byte("PLATFORM b"))
	f.Add([]byte("REPORT  0 "))
	f.Fuzz(func(t *testing.T, line []byte) {
		for _, cmds := range [][]string{{CmdReport}, {CmdQuote, CmdPlatform}} {
			req, err := ParseRequest(line, cmds...)
			if err != nil {
				continue
			}
			if len(line) >= MaxRequestLine || !ValidID([]byte(req.ID)) || req.VMPL > maxVMPL {
				t.Fatalf("accepted %q as %+v", line, req)
			}
			// What was accepted re-encodes to the same line (hex case aside).
			var arg string
			switch req.Cmd {
			case CmdReport:
				arg = ReportArg(req.VMPL, req.ReportData)
			case CmdQuote:
				arg = QuoteArg(req.ReportData)
			}
			again := strings.TrimSuffix(string(RequestLine(req.Cmd, req.ID, arg)), "\n")
			if !strings.EqualFold(again, string(line)) {
				t.Fatalf("accepted %q, re-encodes as %q", line, again)
			}
		}
	})
}

// The guest parses whatever the host writes on the port.
func FuzzParseAnswer(f *testing.F) {
	f.Add([]byte("OK x1 AQI= Aw=="))
	f.Add([]byte("ERR - no"))
	f.Add([]byte("OK x2 " + QuotePayload([]byte("q"))))
	f.Fuzz(func(t *testing.T, line []byte) {
		id, ok, rest, err := ParseAnswer(line)
		if err != nil {
			return
		}
		kind := "ERR"
		if ok {
			kind = "OK"
		}
		if kind+" "+id+" "+string(rest) != string(line) {
			t.Fatalf("%q split as %q %q %q", line, kind, id, rest)
		}
		if report, _, err := ParseReportPayload(rest); err == nil && len(report) != SNPReportSize {
			t.Fatalf("report of %d bytes accepted", len(report))
		}
		if quote, err := ParseQuotePayload(rest); err == nil && len(quote) > MaxQuoteSize {
			t.Fatalf("quote of %d bytes accepted", len(quote))
		}
	})
}

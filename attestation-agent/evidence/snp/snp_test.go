package snp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/spport"
)

// fakeReport is a report-shaped block with rd as REPORT_DATA and
// recognisable bytes everywhere else.
func fakeReport(rd [abi.ReportDataSize]byte) []byte {
	r := make([]byte, abi.ReportSize)
	for i := range r {
		r[i] = byte(i * 7)
	}
	copy(r[reportDataOffset:], rd[:])
	return r
}

func fakeCertTable() []byte {
	t := abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: uuid.MustParse(abi.VcekGUID), RawCert: []byte("vcek der")},
		{GUID: uuid.MustParse(abi.AskGUID), RawCert: []byte("ask der")},
		{GUID: uuid.MustParse(abi.ArkGUID), RawCert: []byte("ark der")},
		{GUID: uuid.MustParse("11111111-2222-3333-4444-555555555555"), RawCert: []byte("extra")},
	}}
	return t.Marshal()
}

// fakeSP answers requests on conn like emulated/snp, first sending
// noise: a stale answer for another id and a garbage line.
func fakeSP(t *testing.T, conn net.Conn, answer func(id string, rd [abi.ReportDataSize]byte) string) {
	t.Helper()
	go func() {
		br := bufio.NewReader(conn)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			if len(f) != 4 {
				fmt.Fprintf(conn, "ERR - bad request\n")
				continue
			}
			var rd [abi.ReportDataSize]byte
			hex.Decode(rd[:], []byte(f[3]))
			fmt.Fprintf(conn, "OK stale %s %s\nnoise without spaces\n", base64.StdEncoding.EncodeToString(fakeReport(rd)), "AAAA")
			fmt.Fprint(conn, answer(f[1], rd))
		}
	}()
}

type pipeSource struct{ conn net.Conn }

func (p pipeSource) Name() string { return "pipe" }
func (p pipeSource) Report(_ context.Context, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	return Exchange(p.conn, rd)
}

func okAnswer(id string, rd [abi.ReportDataSize]byte) string {
	b64 := base64.StdEncoding
	return fmt.Sprintf("OK %s %s %s\n", id, b64.EncodeToString(fakeReport(rd)), b64.EncodeToString(fakeCertTable()))
}

func TestEvidence(t *testing.T) {
	guest, host := net.Pipe()
	defer guest.Close()
	defer host.Close()
	fakeSP(t, host, okAnswer)

	p := New(pipeSource{guest})
	if p.Tee() != kbstypes.TeeSNP {
		t.Fatalf("Tee() = %q", p.Tee())
	}
	rd := bytes.Repeat([]byte{0x5a}, kbstypes.ReportDataSize)
	raw, err := p.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	report, certs := decodeEvidence(t, raw)
	if !bytes.Equal(report, fakeReport([abi.ReportDataSize]byte(rd))) {
		t.Error("attestation_report does not decode back to the report's bytes")
	}
	want := []struct{ typ, data string }{{`"VCEK"`, "vcek der"}, {`"ASK"`, "ask der"}, {`"ARK"`, "ark der"}, {`{"OTHER":"11111111-2222-3333-4444-555555555555"}`, "extra"}}
	if len(certs) != len(want) {
		t.Fatalf("cert_chain has %d entries, want %d", len(certs), len(want))
	}
	for i, w := range want {
		if string(certs[i].Type) != w.typ || string(certs[i].Data) != w.data {
			t.Errorf("cert_chain[%d] = %s %q, want %s %q", i, certs[i].Type, certs[i].Data, w.typ, w.data)
		}
	}
	// Named fields land where Trustee's verifier reads them.
	var doc struct {
		Report struct {
			ReportData  []int `json:"report_data"`
			ReportedTCB struct {
				Bootloader, Microcode int
			} `json:"reported_tcb"`
			Signature struct{ R, S []int } `json:"signature"`
		} `json:"attestation_report"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Report.ReportData) != 64 || doc.Report.ReportData[0] != 0x5a {
		t.Errorf("report_data = %v", doc.Report.ReportData)
	}
	fr := fakeReport([abi.ReportDataSize]byte(rd))
	if doc.Report.ReportedTCB.Bootloader != int(fr[0x180]) || doc.Report.ReportedTCB.Microcode != int(fr[0x187]) {
		t.Errorf("reported_tcb = %+v", doc.Report.ReportedTCB)
	}
	if len(doc.Report.Signature.R) != 72 || len(doc.Report.Signature.S) != 72 {
		t.Errorf("signature r/s lengths %d/%d", len(doc.Report.Signature.R), len(doc.Report.Signature.S))
	}

	if _, err := p.Evidence(context.Background(), make([]byte, 65)); err == nil {
		t.Error("65-byte report data accepted")
	}
}

func TestEvidenceWithoutCertTable(t *testing.T) {
	raw, err := EncodeEvidence(make([]byte, abi.ReportSize), nil)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if string(doc["cert_chain"]) != "null" {
		t.Errorf("cert_chain = %s, want null", doc["cert_chain"])
	}
	if _, err := EncodeEvidence(make([]byte, 100), nil); err == nil {
		t.Error("short report encoded")
	}
	if _, err := EncodeEvidence(make([]byte, abi.ReportSize), []byte{1, 2, 3}); err == nil {
		t.Error("garbage cert table encoded")
	}
}

func TestReportRefusals(t *testing.T) {
	tests := []struct {
		name   string
		answer func(id string, rd [abi.ReportDataSize]byte) string
		want   string
	}{
		{"SP error", func(id string, _ [abi.ReportDataSize]byte) string { return "ERR " + id + " vmpl 7: want 0 to 3\n" }, "refused REPORT: vmpl 7"},
		{"other report data", func(id string, rd [abi.ReportDataSize]byte) string {
			rd[0] ^= 1
			return okAnswer(id, rd)
		}, "binds other report data"},
		{"short report", func(id string, _ [abi.ReportDataSize]byte) string { return "OK " + id + " AAAA AAAA\n" }, "want 1184"},
		{"no cert table", func(id string, _ [abi.ReportDataSize]byte) string { return "OK " + id + " AAAA\n" }, "want a report and a certificate table"},
		{"oversized line", func(id string, _ [abi.ReportDataSize]byte) string {
			return "OK " + id + " " + strings.Repeat("A", spport.MaxLine) + "\n"
		}, "longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			guest, host := net.Pipe()
			defer guest.Close()
			defer host.Close()
			fakeSP(t, host, tc.answer)
			_, err := New(pipeSource{guest}).Evidence(context.Background(), make([]byte, kbstypes.ReportDataSize))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want containing %q", err, tc.want)
			}
		})
	}
}

func TestExchangeEOF(t *testing.T) {
	guest, host := net.Pipe()
	go func() {
		io.CopyN(io.Discard, host, 10)
		host.Close()
	}()
	_, _, err := Exchange(guest, [abi.ReportDataSize]byte{})
	if err == nil {
		t.Fatal("closed port gave a report")
	}
}

func TestPortSourceTimesOut(t *testing.T) {
	// A FIFO stands in for a port with no SP behind it: the request is
	// read back (and skipped as not an answer), then nothing comes.
	path := filepath.Join(t.TempDir(), "cloak.sp")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &PortSource{Path: path, Timeout: 300 * time.Millisecond}
	start := time.Now()
	_, _, err := s.Report(context.Background(), [abi.ReportDataSize]byte{})
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("timeout took %v", time.Since(start))
	}
	if _, _, err := (&PortSource{Path: filepath.Join(t.TempDir(), "missing")}).Report(context.Background(), [abi.ReportDataSize]byte{}); err == nil {
		t.Error("missing port gave a report")
	}
}

func TestDetect(t *testing.T) {
	dir := t.TempDir()
	p := Paths{
		ConfigfsTSM: filepath.Join(dir, "tsm"),
		SevPlatform: filepath.Join(dir, "platform"),
		SevGuest:    filepath.Join(dir, "sev-guest"),
		EmulatedSP:  filepath.Join(dir, "cloak.sp"),
	}
	if _, err := Detect(p); err == nil || !strings.Contains(err.Error(), p.EmulatedSP) {
		t.Errorf("nothing present: err = %v, want one naming the paths looked at", err)
	}
	if Available(p) {
		t.Error("Available with nothing present")
	}
	touch := func(path string) {
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	touch(p.EmulatedSP)
	if s, err := Detect(p); err != nil || !strings.Contains(s.Name(), "emulated SP") {
		t.Errorf("port present: %v, %v", s, err)
	}
	touch(p.SevGuest)
	if s, err := Detect(p); err != nil || s.Name() != "sev-guest" {
		t.Errorf("sev-guest present: %v, %v", s, err)
	}
	touch(p.ConfigfsTSM)
	if s, err := Detect(p); err != nil || s.Name() != "sev-guest" {
		t.Errorf("configfs without the sev-guest platform device must not win: %v, %v", s, err)
	}
	touch(p.SevPlatform)
	if s, err := Detect(p); err != nil || s.Name() != "configfs-tsm" {
		t.Errorf("configfs-tsm present: %v, %v", s, err)
	}
}

func TestHostData(t *testing.T) {
	r := make([]byte, abi.ReportSize)
	copy(r[hostDataOffset:], "host data!")
	hd, err := HostData(r)
	if err != nil || !bytes.HasPrefix(hd[:], []byte("host data!")) {
		t.Errorf("HostData = %q, %v", hd, err)
	}
	if _, err := HostData(r[:10]); err == nil {
		t.Error("short report accepted")
	}
}

type certEntry struct {
	Type json.RawMessage
	Data []byte
}

// decodeEvidence is the reverse of EncodeEvidence, written from the field
// table independently of the encoder's loop, for round-trip checks.
func decodeEvidence(t *testing.T, raw []byte) ([]byte, []certEntry) {
	t.Helper()
	var doc struct {
		Report    map[string]json.RawMessage `json:"attestation_report"`
		CertChain []struct {
			Type json.RawMessage `json:"cert_type"`
			Data []int           `json:"data"`
		} `json:"cert_chain"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	ints := func(m json.RawMessage) []byte {
		var v []int
		if err := json.Unmarshal(m, &v); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		b := make([]byte, len(v))
		for i, x := range v {
			b[i] = byte(x)
		}
		return b
	}
	out := make([]byte, abi.ReportSize)
	if len(doc.Report) != len(reportFields) {
		t.Errorf("attestation_report has %d fields, want %d", len(doc.Report), len(reportFields))
	}
	for _, f := range reportFields {
		m, ok := doc.Report[f.name]
		if !ok {
			t.Fatalf("field %s missing", f.name)
		}
		dst := out[f.off : f.off+f.size]
		switch f.kind {
		case kindUint:
			var n uint64
			if err := json.Unmarshal(m, &n); err != nil {
				t.Fatal(err)
			}
			for i := range dst {
				dst[i] = byte(n >> (8 * i))
			}
		case kindBytes:
			copy(dst, ints(m))
		case kindTCB:
			var tcb struct {
				Bootloader, Tee, Snp, Microcode byte
				Reserved                        json.RawMessage `json:"_reserved"`
			}
			if err := json.Unmarshal(m, &tcb); err != nil {
				t.Fatal(err)
			}
			dst[0], dst[1], dst[6], dst[7] = tcb.Bootloader, tcb.Tee, tcb.Snp, tcb.Microcode
			copy(dst[2:6], ints(tcb.Reserved))
		case kindSignature:
			var sig struct {
				R, S     json.RawMessage
				Reserved json.RawMessage `json:"_reserved"`
			}
			if err := json.Unmarshal(m, &sig); err != nil {
				t.Fatal(err)
			}
			copy(dst, append(append(ints(sig.R), ints(sig.S)...), ints(sig.Reserved)...))
		}
	}
	var certs []certEntry
	for _, c := range doc.CertChain {
		d := make([]byte, len(c.Data))
		for i, x := range c.Data {
			d[i] = byte(x)
		}
		certs = append(certs, certEntry{Type: c.Type, Data: d})
	}
	return out, certs
}

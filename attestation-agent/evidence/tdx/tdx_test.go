package tdx

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/attestation-agent/evidence/spport"
)

// fakeQuote is a quote-shaped buffer: version 4, report data and
// MRCONFIGID at their offsets (the guest never verifies signatures).
func fakeQuote(rd []byte, mrConfigID [48]byte) []byte {
	q := make([]byte, 0x3FC)
	q[0] = 4
	copy(q[reportDataOffset:], rd)
	copy(q[mrConfigIDOffset:], mrConfigID[:])
	return q
}

// fakePort is a raw pseudo-terminal standing in for the guest's cloak.sp
// port; answer maps a request line's fields to the answer line (without the
// newline) or "" for none.
func fakePort(t *testing.T, answer func(f []string) string) string {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals on this machine: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave := fmt.Sprintf("/dev/pts/%d", n)
	sf, err := os.OpenFile(slave, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sf.Close() })
	tio, err := unix.IoctlGetTermios(int(sf.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	if err := unix.IoctlSetTermios(int(sf.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	go func() {
		br := bufio.NewReader(master)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if a := answer(strings.Fields(line)); a != "" {
				fmt.Fprint(master, a+"\n")
			}
		}
	}()
	return slave
}

// tdxPort answers like emulated/tdx: PLATFORM -> tdx, QUOTE -> a fake
// quote binding the request's report data (or other report data when
// replay is set).
func tdxPort(t *testing.T, mrConfigID [48]byte, replay bool) string {
	return fakePort(t, func(f []string) string {
		switch {
		case len(f) == 2 && f[0] == "PLATFORM":
			return "OK " + f[1] + " tdx"
		case len(f) == 3 && f[0] == "QUOTE":
			rd, _ := hex.DecodeString(f[2])
			if replay {
				rd = make([]byte, 64)
			}
			// An answer to someone else's request first: it is skipped.
			return "OK other AAAA\nOK " + f[1] + " " + base64.StdEncoding.EncodeToString(fakeQuote(rd, mrConfigID))
		}
		return "ERR - bad request"
	})
}

func noTDX(t *testing.T) Paths {
	dir := t.TempDir()
	return Paths{ConfigfsTSM: filepath.Join(dir, "tsm"), TdxGuest: filepath.Join(dir, "tdx_guest"),
		EmulatedSP: filepath.Join(dir, "sp"), CCEL: filepath.Join(dir, "CCEL")}
}

func TestDetect(t *testing.T) {
	ctx := context.Background()
	p := noTDX(t)
	if _, err := Detect(ctx, p); err == nil || !strings.Contains(err.Error(), "no TDX quote source") || !strings.Contains(err.Error(), p.TdxGuest) {
		t.Errorf("no TDX: err = %v", err)
	}
	// The emulated SNP SP refuses PLATFORM.
	p.EmulatedSP = fakePort(t, func(f []string) string {
		return "ERR " + f[1] + ` want "REPORT <id> <vmpl> <128 hex digits>"`
	})
	if _, err := Detect(ctx, p); err == nil || !strings.Contains(err.Error(), "no emulated TDX platform") {
		t.Errorf("SNP port: err = %v", err)
	}
	p.EmulatedSP = tdxPort(t, [48]byte{}, false)
	src, err := Detect(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := src.(*PortSource); !ok {
		t.Errorf("source %T, want the emulated port", src)
	}
	// A regular file is no tdx_guest device; a character device wins
	// over the port (/dev/null stands in for /dev/tdx_guest).
	if err := os.WriteFile(p.TdxGuest, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if src, err := Detect(ctx, p); err != nil || src.Name() == "tdx_guest" {
		t.Errorf("with a regular file as /dev/tdx_guest: %v, %v", src, err)
	}
	p.TdxGuest = "/dev/null"
	if src, err := Detect(ctx, p); err != nil || src.Name() != "null" {
		t.Errorf("with a tdx_guest device: %v, %v", src, err)
	}
}

func TestEvidence(t *testing.T) {
	p := noTDX(t)
	mr := [48]byte{1, 2, 3}
	p.EmulatedSP = tdxPort(t, mr, false)
	src, err := Detect(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	rd := bytes.Repeat([]byte{0x42}, 64)
	prov := New(src, p)
	raw, err := prov.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]*string
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	if _, ok := ev["cc_eventlog"]; ok || len(ev) != 1 {
		t.Errorf("evidence %s: want only a quote without a CCEL", raw)
	}
	quote, err := base64.StdEncoding.DecodeString(*ev["quote"])
	if err != nil || !bytes.Equal(quote, fakeQuote(rd, mr)) {
		t.Fatalf("quote %x, %v", quote, err)
	}
	if got, err := MRConfigID(quote); err != nil || got != mr {
		t.Errorf("MRConfigID = %x, %v", got, err)
	}

	ccel := []byte("CCEL event log bytes")
	if err := os.WriteFile(p.CCEL, ccel, 0o600); err != nil {
		t.Fatal(err)
	}
	raw, err = prov.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &ev); err != nil || ev["cc_eventlog"] == nil || *ev["cc_eventlog"] != base64.StdEncoding.EncodeToString(ccel) {
		t.Errorf("evidence with CCEL %s (%v)", raw, err)
	}

	if _, err := prov.Evidence(context.Background(), make([]byte, 65)); err == nil {
		t.Error("65-byte report data accepted")
	}
}

func TestQuoteRefused(t *testing.T) {
	rd := [64]byte{7}
	replay := &PortSource{Path: tdxPort(t, [48]byte{}, true)}
	if _, err := New(replay, noTDX(t)).Quote(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "binds other report data") {
		t.Errorf("replayed quote: err = %v", err)
	}
	refusing := &PortSource{Path: fakePort(t, func(f []string) string { return "ERR " + f[1] + " signing failed" })}
	if _, err := refusing.Quote(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "refused QUOTE: signing failed") {
		t.Errorf("ERR answer: err = %v", err)
	}
	garbled := &PortSource{Path: fakePort(t, func(f []string) string { return "OK " + f[1] + " !!!" })}
	if _, err := garbled.Quote(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "emulated TDX quote") {
		t.Errorf("garbled answer: err = %v", err)
	}
	short := &PortSource{Path: fakePort(t, func(f []string) string { return "OK " + f[1] + " AAAA" })}
	if _, err := New(short, noTDX(t)).Quote(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("short quote: err = %v", err)
	}
	huge := &PortSource{Path: fakePort(t, func(f []string) string { return "OK " + f[1] + " " + strings.Repeat("A", spport.MaxLine) })}
	if _, err := huge.Quote(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("over-long answer: err = %v", err)
	}
	silent := &PortSource{Path: fakePort(t, func([]string) string { return "" }), Timeout: 200 * time.Millisecond}
	if _, err := silent.Quote(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "emulated platform's port") {
		t.Errorf("silent port: err = %v", err)
	}
}

package tdx

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	tdxverifier "github.com/cloak-containers/cloak/kbs/verifier/tdx"
)

// The tests verify with the KBS's own TDX verifier (host test code may use
// it; the package itself does not import kbs/).

var (
	testDir  string
	testRoot *Root
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "emulatedtdx")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testDir = filepath.Join(dir, "platform")
	if testRoot, err = LoadOrCreate(testDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func testLaunch() (Launch, []byte) {
	initdata := []byte("version = \"0.1.0\"\nalgorithm = \"sha384\"\n")
	var l Launch
	copy(l.MRTD[:], bytes.Repeat([]byte{0x4d}, 48))
	var err error
	if l.MRCONFIGID, err = MRConfigIDFor(initdata); err != nil {
		panic(err)
	}
	return l, initdata
}

func kbsVerifier(t *testing.T, root *x509.Certificate, collateralDir string, now time.Time) *tdxverifier.Verifier {
	t.Helper()
	o := tdxverifier.Options{
		Collateral: collateral.New(collateral.Options{Dir: collateralDir, Offline: true}),
		Now:        func() time.Time { return now },
	}
	if root != nil {
		o.ExtraRoots = []*x509.Certificate{root}
	}
	v, err := tdxverifier.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func evidence(t *testing.T, quote []byte) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(map[string]string{"quote": base64.StdEncoding.EncodeToString(quote)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func reportData() [64]byte {
	var rd [64]byte
	for i := range rd {
		rd[i] = byte(0xa0 + i)
	}
	return rd
}

func TestQuoteVerifiesWithKBSVerifier(t *testing.T) {
	l, initdata := testLaunch()
	rd := reportData()
	quote, err := New(testRoot, l).Quote(rd)
	if err != nil {
		t.Fatal(err)
	}
	v := kbsVerifier(t, testRoot.RootCA, filepath.Join(testDir, CollateralDir), time.Now())
	digest := sha512.Sum384(initdata)
	claims, err := v.Verify(context.Background(), evidence(t, quote), rd[:], digest[:])
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	zero48 := hex.EncodeToString(make([]byte, 48))
	for name, want := range map[string]any{
		"emulated": true, "tcb_status": "UpToDate", "qe_tcb_status": "UpToDate", "debug": false,
		"fmspc": FMSPC, "mr_td": hex.EncodeToString(l.MRTD[:]), "mr_config_id": hex.EncodeToString(digest[:]),
		"report_data": hex.EncodeToString(rd[:]), "rtmr0": zero48, "rtmr3": zero48,
		"tee_tcb_svn": hex.EncodeToString(TeeTCBSVN[:]), "mr_seam": hex.EncodeToString(MRSEAM[:]),
	} {
		if claims[name] != want {
			t.Errorf("claim %s = %v, want %v", name, claims[name], want)
		}
	}
}

func wantCheck(t *testing.T, err error, text string) {
	t.Helper()
	var ce *verifier.CheckError
	if !errors.As(err, &ce) || ce.Check != verifier.CheckEvidence {
		t.Fatalf("err = %v, want an evidence CheckError", err)
	}
	if !strings.Contains(err.Error(), text) {
		t.Fatalf("err = %v, want it to contain %q", err, text)
	}
}

func TestQuoteRejected(t *testing.T) {
	l, initdata := testLaunch()
	rd := reportData()
	quote, err := New(testRoot, l).Quote(rd)
	if err != nil {
		t.Fatal(err)
	}
	coll := filepath.Join(testDir, CollateralDir)
	digest := sha512.Sum384(initdata)
	good := kbsVerifier(t, testRoot.RootCA, coll, time.Now())

	// A flipped bit anywhere in the signed header and body, in the
	// signature, in the QE report or in the PCK certificate.
	pckDER := bytes.Index(quote, []byte("-----BEGIN CERTIFICATE-----"))
	for _, off := range []int{0x08, 0x30 + 0x88, 0x30 + 0x208, 0x27C + 10, 0x27C + 0x80 + 6 + 0x40, pckDER + 200} {
		bad := bytes.Clone(quote)
		bad[off] ^= 0x01
		if _, err := good.Verify(context.Background(), evidence(t, bad), rd[:], digest[:]); err == nil {
			t.Errorf("quote with bit flipped at %#x verified", off)
		}
	}

	tests := []struct {
		name string
		v    *tdxverifier.Verifier
		rd   []byte
		init []byte
		text string
	}{
		{"root not configured", kbsVerifier(t, nil, coll, time.Now()), rd[:], digest[:], "which this KBS does not trust"},
		{"other emulated root", kbsVerifier(t, otherRoot(t).RootCA, coll, time.Now()), rd[:], digest[:], "which this KBS does not trust"},
		{"collateral expired", kbsVerifier(t, testRoot.RootCA, coll, time.Now().Add(CollateralValidity+time.Hour)), rd[:], digest[:], "expired"},
		{"no collateral", kbsVerifier(t, testRoot.RootCA, t.TempDir(), time.Now()), rd[:], digest[:], "tdx quote verification failed"},
		{"other report data", good, make([]byte, 64), digest[:], "report data"},
		{"other initdata", good, rd[:], make([]byte, 48), "MRCONFIGID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.v.Verify(context.Background(), evidence(t, quote), tc.rd, tc.init)
			if err == nil {
				t.Fatal("verified")
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.text)
			}
		})
	}
	// Collateral of another emulated platform: its TCB info is signed
	// under another root.
	other := otherRoot(t)
	otherColl := t.TempDir()
	if err := other.WriteCollateral(otherColl, time.Now()); err != nil {
		t.Fatal(err)
	}
	_, err = kbsVerifier(t, testRoot.RootCA, otherColl, time.Now()).Verify(context.Background(), evidence(t, quote), rd[:], digest[:])
	wantCheck(t, err, "tdx quote verification failed")
}

var other *Root

func otherRoot(t *testing.T) *Root {
	t.Helper()
	if other == nil {
		var err error
		if other, err = Generate(time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	return other
}

func TestOfflineLayoutMatchesKBS(t *testing.T) {
	docs, err := testRoot.Collateral(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 4 {
		t.Fatalf("%d collateral documents, want TCB info, QE identity and two CRLs", len(docs))
	}
	for u := range docs {
		want, err := collateral.OfflinePath("/d", u)
		if err != nil {
			t.Fatal(err)
		}
		got, err := offlinePath("/d", u)
		if err != nil || got != want {
			t.Errorf("offlinePath(%s) = %q, %v; the KBS reads %q", u, got, err, want)
		}
		if _, err := os.Stat(strings.Replace(want, "/d", filepath.Join(testDir, CollateralDir), 1)); err != nil {
			t.Errorf("LoadOrCreate did not write %s: %v", u, err)
		}
	}
}

func TestLoadOrCreateReusesAndRefusesDamage(t *testing.T) {
	again, err := LoadOrCreate(testDir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.RootCA.Equal(testRoot.RootCA) || !again.keys.attestation.Equal(testRoot.keys.attestation) {
		t.Fatal("second LoadOrCreate made a new hierarchy")
	}
	if fi, err := os.Stat(filepath.Join(testDir, KeysFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keys file mode: %v %v", fi, err)
	}
	dir := t.TempDir()
	if _, err := LoadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	// Keys of another hierarchy do not match the certificates.
	otherDir := t.TempDir()
	if err := otherRoot(t).save(otherDir); err != nil {
		t.Fatal(err)
	}
	keys, err := os.ReadFile(filepath.Join(otherDir, KeysFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeysFile), keys, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "delete the directory") {
		t.Fatalf("mismatched keys: err = %v", err)
	}
}

func TestServe(t *testing.T) {
	l, _ := testLaunch()
	s := New(testRoot, l)
	host, guest := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.Serve(host) }()
	br := bufio.NewReader(guest)
	ask := func(line string) string {
		t.Helper()
		if _, err := fmt.Fprint(guest, line); err != nil {
			t.Fatal(err)
		}
		resp, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSuffix(resp, "\n")
	}
	if got := ask("PLATFORM p1\n"); got != "OK p1 tdx" {
		t.Errorf("PLATFORM answer %q", got)
	}
	rd := reportData()
	resp := ask("QUOTE q1 " + hex.EncodeToString(rd[:]) + "\n")
	f := strings.Fields(resp)
	if len(f) != 3 || f[0] != "OK" || f[1] != "q1" {
		t.Fatalf("QUOTE answer %.80q", resp)
	}
	raw, err := base64.StdEncoding.DecodeString(f[2])
	if err != nil {
		t.Fatal(err)
	}
	q, err := abi.QuoteToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	if v4, ok := q.(*pb.QuoteV4); !ok || !bytes.Equal(v4.GetTdQuoteBody().GetReportData(), rd[:]) || !bytes.Equal(v4.GetTdQuoteBody().GetMrTd(), l.MRTD[:]) {
		t.Fatalf("quote does not carry the report data and MRTD: %v", q)
	}
	for _, tc := range []struct{ line, want string }{
		{"REPORT r1 0 " + hex.EncodeToString(rd[:]) + "\n", "ERR r1 this emulated platform is TDX"},
		{"QUOTE q2 abcd\n", "ERR q2 report data: want 128 hex digits, got 4"},
		{"QUOTE q3 " + strings.Repeat("zz", 64) + "\n", "ERR q3 report data:"},
		{"QUOTE bad-id " + hex.EncodeToString(rd[:]) + "\n", "ERR - request id"},
		{"HELLO h1\n", "ERR h1 unknown command"},
		{strings.Repeat("x", 1000) + "\n", "ERR - request longer than 255 bytes"},
		{"\n", "ERR - want"},
	} {
		if got := ask(tc.line); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%.30q: answer %q, want prefix %q", tc.line, got, tc.want)
		}
	}
	guest.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestRunServesQEMUSocket(t *testing.T) {
	l, _ := testLaunch()
	sock := filepath.Join(t.TempDir(), "sp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); New(testRoot, l).Run(ctx, sock, t.Logf) }()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(conn, "PLATFORM x\n")
	resp, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || resp != "OK x tdx\n" {
		t.Fatalf("answer %q, %v", resp, err)
	}
	cancel()
	<-done
	conn.Close()
}

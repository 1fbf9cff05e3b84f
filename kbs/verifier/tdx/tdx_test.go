package tdx

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tdxtesting "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
)

// genuineTime is inside the validity of the collateral go-tdx-guest ships
// with its genuine quote (TCB info until 2023-07-18, QE identity until
// 2023-07-08).
var genuineTime = time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)

// writeOffline lays out collateral responses as an offline collateral
// directory (collateral.OfflinePath, plus ".headers" files).
func writeOffline(t testing.TB, dir string, responses map[string]tdxtesting.HTTPResponse) {
	t.Helper()
	for u, r := range responses {
		p, err := collateral.OfflinePath(dir, u)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, r.Body, 0o644); err != nil {
			t.Fatal(err)
		}
		var h bytes.Buffer
		for name, vals := range r.Header {
			for _, v := range vals {
				h.WriteString(name + ": " + v + "\n")
			}
		}
		if h.Len() > 0 {
			if err := os.WriteFile(p+collateral.HeadersSuffix, h.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// genuineVerifier verifies against the collateral go-tdx-guest ships, read
// from an offline directory, at time at.
func genuineVerifier(t testing.TB, at time.Time, mutate func(map[string]tdxtesting.HTTPResponse)) *Verifier {
	t.Helper()
	responses := map[string]tdxtesting.HTTPResponse{}
	for u, r := range tdxtesting.TestGetter.Responses {
		responses[u] = r
	}
	if mutate != nil {
		mutate(responses)
	}
	dir := t.TempDir()
	writeOffline(t, dir, responses)
	v, err := New(Options{
		Collateral: collateral.New(collateral.Options{Dir: dir, Offline: true}),
		Now:        func() time.Time { return at },
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func evidenceJSON(t testing.TB, quote, ccel []byte) json.RawMessage {
	t.Helper()
	ev := Evidence{Quote: base64.StdEncoding.EncodeToString(quote)}
	if ccel != nil {
		s := base64.StdEncoding.EncodeToString(ccel)
		ev.CCEventLog = &s
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func genuineReportData(t testing.TB) []byte {
	t.Helper()
	q, err := ParseQuote(testdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	return q.GetTdQuoteBody().GetReportData()
}

func wantCheck(t *testing.T, err error, check, text string) {
	t.Helper()
	var ce *verifier.CheckError
	if !errors.As(err, &ce) || ce.Check != check {
		t.Fatalf("err = %v, want check %q", err, check)
	}
	if !strings.Contains(err.Error(), text) {
		t.Fatalf("err = %q, want it to mention %q", err, text)
	}
}

func TestGenuineQuote(t *testing.T) {
	v := genuineVerifier(t, genuineTime, nil)
	rd := genuineReportData(t)
	claims, err := v.Verify(context.Background(), evidenceJSON(t, testdata.RawQuote, nil), rd, nil)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	q, _ := ParseQuote(testdata.RawQuote)
	body := q.GetTdQuoteBody()
	for name, want := range map[string]any{
		"emulated": false,
		// The TCB levels in the shipped TCB info are all newer than this
		// quote's TCB (go-tdx-guest's own tests say so too).
		"tcb_status":                 "NotSupported",
		"qe_tcb_status":              "UpToDate",
		"tcb_evaluation_data_number": 15,
		"fmspc":                      "50806f000000",
		"debug":                      false,
		"report_data":                hexOf(rd),
		"mr_td":                      hexOf(body.GetMrTd()),
		"rtmr0":                      hexOf(body.GetRtmrs()[0]),
		"rtmr3":                      hexOf(body.GetRtmrs()[3]),
		"xfam":                       hexOf(body.GetXfam()),
		"init_data":                  "",
	} {
		if claims[name] != want {
			t.Errorf("claim %s = %v, want %v", name, claims[name], want)
		}
	}
	for _, name := range []string{"mr_config_id", "mr_owner", "mr_owner_config", "td_attributes", "tee_tcb_svn", "rtmr1", "rtmr2", "qe_svn", "pce_svn"} {
		if _, ok := claims[name]; !ok {
			t.Errorf("claim %s missing", name)
		}
	}
	if _, ok := claims["ccel"]; ok {
		t.Errorf("ccel claim without an event log: %v", claims["ccel"])
	}
}

// TestGenuineQuoteFlippedBit flips one bit in the signed body, the quote
// signature and the PCK leaf certificate of the genuine quote.
func TestGenuineQuoteFlippedBit(t *testing.T) {
	raw := testdata.RawQuote
	q, err := ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	sig := bytes.Index(raw, q.GetSignedData().GetSignature())
	// The PCK leaf with one bit of its serial number flipped: it still
	// parses, but the intermediate's signature over it no longer holds.
	chain := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	blk, _ := pem.Decode(chain)
	oldPEM := pem.EncodeToMemory(blk)
	blk.Bytes = bytes.Clone(blk.Bytes)
	blk.Bytes[16] ^= 0x01
	badCert := bytes.Replace(raw, oldPEM, pem.EncodeToMemory(blk), 1)
	if bytes.Equal(badCert, raw) || len(badCert) != len(raw) {
		t.Fatal("could not flip a bit in the PCK certificate")
	}
	rd := genuineReportData(t)
	tests := []struct {
		name string
		off  int
		text string
		raw  []byte
	}{
		{"body mr_td", 48 + 136, "unable to verify message digest", nil},
		{"header", 10, "unable to verify message digest", nil},
		{"signature", sig + 5, "unable to verify message digest", nil},
		{"pck certificate", -1, "unable to validate PCK leaf certificate: certificate signature verification using parent certificate failed", badCert},
	}
	v := genuineVerifier(t, genuineTime, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := tc.raw
			if bad == nil {
				bad = bytes.Clone(raw)
				bad[tc.off] ^= 0x04
			}
			_, err := v.Verify(context.Background(), evidenceJSON(t, bad, nil), rd, nil)
			wantCheck(t, err, verifier.CheckEvidence, tc.text)
		})
	}
}

func TestGenuineQuoteRejected(t *testing.T) {
	rd := genuineReportData(t)
	q, _ := ParseQuote(testdata.RawQuote)
	mrConfigID := q.GetTdQuoteBody().GetMrConfigId()
	tests := []struct {
		name     string
		v        *Verifier
		rd       []byte
		initdata []byte
		check    string
		text     string
	}{
		{"expired collateral", genuineVerifier(t, time.Date(2023, time.August, 1, 0, 0, 0, 0, time.UTC), nil), rd, nil,
			verifier.CheckEvidence, "TCB info for FMSPC 50806f000000"},
		{"expired collateral names when", genuineVerifier(t, time.Date(2023, time.August, 1, 0, 0, 0, 0, time.UTC), nil), rd, nil,
			verifier.CheckEvidence, "expired at 2023-07-18T08:42:58Z"},
		{"certificates expired", genuineVerifier(t, time.Date(2060, time.January, 1, 0, 0, 0, 0, time.UTC), nil), rd, nil,
			verifier.CheckEvidence, "PCK chain certificate \"Intel SGX PCK Certificate\" expired at"},
		{"collateral missing offline", genuineVerifier(t, genuineTime, func(m map[string]tdxtesting.HTTPResponse) {
			for u := range m {
				if strings.Contains(u, "/qe/identity") {
					delete(m, u)
				}
			}
		}), rd, nil, verifier.CheckEvidence, "qe/identity is not available offline"},
		{"wrong report data", genuineVerifier(t, genuineTime, nil), bytes.Repeat([]byte{0xab}, 64), nil,
			verifier.CheckReportData, "expected abab"},
		{"wrong mr_config_id", genuineVerifier(t, genuineTime, nil), rd, bytes.Repeat([]byte{0x11}, 48),
			verifier.CheckEvidence, "MRCONFIGID " + hexOf(mrConfigID) + " is not the digest"},
		{"sha512 initdata", genuineVerifier(t, genuineTime, nil), rd, bytes.Repeat([]byte{0x11}, 64),
			verifier.CheckEvidence, "use initdata algorithm sha384 or sha256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.v.Verify(context.Background(), evidenceJSON(t, testdata.RawQuote, nil), tc.rd, tc.initdata)
			wantCheck(t, err, tc.check, tc.text)
		})
	}
}

// TestOnlinePCCS fetches the collateral from a PCCS-like HTTPS server on
// loopback through the caching fetcher.
func TestOnlinePCCS(t *testing.T) {
	var hits int
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		u := "https://api.trustedservices.intel.com" + r.URL.RequestURI()
		if r.URL.Path == "/IntelSGXRootCA.der" {
			u = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
		}
		resp, ok := tdxtesting.TestGetter.Responses[u]
		if !ok {
			http.NotFound(w, r)
			return
		}
		for k, vs := range resp.Header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		w.Write(resp.Body)
	}))
	defer srv.Close()
	f := collateral.New(collateral.Options{Client: srv.Client()})
	v, err := New(Options{
		Collateral: f,
		PCSBaseURL: srv.URL,
		// The root CA CRL URL comes from Intel's certificate and points
		// off-machine; this test checks the PCS path only.
		NoRevocationCheck: true,
		Now:               func() time.Time { return genuineTime },
	})
	if err != nil {
		t.Fatal(err)
	}
	rd := genuineReportData(t)
	for range 2 {
		if _, err := v.Verify(context.Background(), evidenceJSON(t, testdata.RawQuote, nil), rd, nil); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	if hits != 2 {
		t.Fatalf("PCCS answered %d requests, want 2 (TCB info and QE identity, then cached)", hits)
	}
}

func TestParseEvidence(t *testing.T) {
	tests := []struct {
		name string
		ev   string
		text string
	}{
		{"not json", `nope`, "want {\"quote\""},
		{"no quote", `{}`, `"quote" is missing`},
		{"bad base64", `{"quote":"!!"}`, "not standard base64"},
		{"bad ccel base64", `{"quote":"AAAA","cc_eventlog":"!!"}`, `"cc_eventlog" is not standard base64`},
		{"too large", `{"quote":"` + strings.Repeat("A", MaxEvidenceSize) + `"}`, "limit is"},
		{"quote too large", `{"quote":"` + strings.Repeat("A", MaxQuoteSize*2) + `"}`, `"quote" is longer than`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseEvidence([]byte(tc.ev))
			wantCheck(t, err, verifier.CheckEvidence, tc.text)
		})
	}
	v := genuineVerifier(t, genuineTime, nil)
	_, err := v.Verify(context.Background(), evidenceJSON(t, testdata.RawQuote[:700], nil), genuineReportData(t), nil)
	wantCheck(t, err, verifier.CheckEvidence, "malformed tdx evidence")
	if _, err := v.Verify(context.Background(), evidenceJSON(t, testdata.RawQuote, nil), nil, nil); err == nil {
		t.Fatal("Verify accepted a nil expected report data")
	}
}

func TestNewRequiresCollateral(t *testing.T) {
	if _, err := New(Options{}); err == nil || !strings.Contains(err.Error(), "no collateral fetcher") {
		t.Fatalf("New without fetcher: %v", err)
	}
}

func FuzzParseQuote(f *testing.F) {
	f.Add(testdata.RawQuote)
	f.Add(testdata.RawQuote[:1100])
	f.Add([]byte{4, 0, 2, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := ParseQuote(data)
		var ce *verifier.CheckError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("untyped error %v", err)
		}
		if err == nil && q.GetTdQuoteBody() == nil {
			t.Fatal("parsed quote has no body")
		}
	})
}

func FuzzVerify(f *testing.F) {
	v := genuineVerifier(f, genuineTime, nil)
	rd := genuineReportData(f)
	f.Add([]byte(evidenceJSON(f, testdata.RawQuote, nil)))
	f.Add([]byte(`{"quote":"BAACAIEAAAA=","cc_eventlog":"AAAA"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		claims, err := v.Verify(context.Background(), data, rd, nil)
		if err == nil && claims["report_data"] != hexOf(rd) {
			t.Fatalf("accepted evidence with wrong report data: %v", claims)
		}
		var ce *verifier.CheckError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("untyped error %v", err)
		}
	})
}

func hexOf(b []byte) string { return hex.EncodeToString(b) }

package kbstypes

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"testing"
)

// The known-answer vector from ARCHITECTURE.md: key order and whitespace in
// the input must not matter, only the RFC 8785 canonical form.
func TestCanonicalSHA384KnownAnswer(t *testing.T) {
	const want = "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
	for _, in := range []string{
		`{"b":1,"a":"test","c":{"d":"e"}}`,
		`{ "c" : { "d" : "e" }, "a" : "test", "b" : 1.0 }`,
	} {
		got, err := CanonicalSHA384([]byte(in))
		if err != nil {
			t.Fatalf("CanonicalSHA384(%s): %v", in, err)
		}
		if hex.EncodeToString(got) != want {
			t.Errorf("CanonicalSHA384(%s) = %x, want %s", in, got, want)
		}
	}
}

func TestReportData(t *testing.T) {
	key := json.RawMessage(`{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"AQ","y":"Ag"}`)
	rd, err := ReportData("", "bm9uY2U=", key)
	if err != nil {
		t.Fatal(err)
	}
	if len(rd) != ReportDataSize {
		t.Fatalf("len = %d, want %d", len(rd), ReportDataSize)
	}
	if !bytes.Equal(rd[48:], make([]byte, 16)) {
		t.Errorf("bytes after the SHA-384 digest must be zero padding: %x", rd[48:])
	}
	// Same document written by hand in canonical order must give the same digest.
	manual, err := CanonicalSHA384([]byte(`{"tee-pubkey":{"y":"Ag","x":"AQ","kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW"},"nonce":"bm9uY2U=","additional-evidence":""}`))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rd[:48], manual) {
		t.Errorf("ReportData digest %x != canonical digest %x", rd[:48], manual)
	}
	// Every bound field changes the result.
	for name, args := range map[string][3]string{
		"nonce":               {"", "bm9uY2U9", string(key)},
		"additional-evidence": {"x", "bm9uY2U=", string(key)},
		"tee-pubkey":          {"", "bm9uY2U=", `{"kty":"EC","crv":"P-256","x":"AQ","y":"Aw"}`},
	} {
		other, err := ReportData(args[0], args[1], json.RawMessage(args[2]))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(other, rd) {
			t.Errorf("changing %s did not change the report data", name)
		}
	}
	if _, err := ReportData("", "n", json.RawMessage(`{not json`)); err == nil {
		t.Error("malformed tee-pubkey: want error")
	}
}

func FuzzReportData(f *testing.F) {
	f.Add("", "bm9uY2U=", []byte(`{"kty":"EC"}`))
	f.Add("x", "", []byte(`[1,2,{"a":1e400}]`))
	f.Fuzz(func(t *testing.T, add, nonce string, key []byte) {
		if _, err := ReportData(add, nonce, key); err == nil {
			// Valid input must be deterministic.
			a, _ := ReportData(add, nonce, key)
			b, _ := ReportData(add, nonce, key)
			if !bytes.Equal(a, b) {
				t.Fatal("ReportData is not deterministic")
			}
		}
	})
}

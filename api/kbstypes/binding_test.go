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

// The binding pinned to the byte: a fixed nonce (base64 of bytes 0..31, the
// shape of a KBS challenge) and the P-256 key of RFC 7517 appendix A.1. The
// hex values were computed outside Go (Python: hashlib.sha384 over
// json.dumps(sort_keys=True, separators=(",", ":")), which equals JCS for
// this ASCII document). Any change of what is hashed, or of how a TEE fits
// the digest into its field, fails here.
const (
	katNonce = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	katJWK   = `{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}`
	// katDigest is RuntimeDataDigest: the sample TEE's report_data.
	katDigest = "8a6244441b1b1171b3a1d56a693d4ce116c1f9ca1ae558bc5f59d46dada54cf49e92a361ab2472c434652fed5887f16d"
	// katPadded is ReportData: REPORT_DATA of snp and tdx.
	katPadded = katDigest + "00000000000000000000000000000000"
	// katTPM is the extraData of a tpm quote: the digest's first 32 bytes.
	katTPM = "8a6244441b1b1171b3a1d56a693d4ce116c1f9ca1ae558bc5f59d46dada54cf4"
)

func TestReportDataKnownAnswer(t *testing.T) {
	digest, err := RuntimeDataDigest("", katNonce, json.RawMessage(katJWK))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(digest); got != katDigest {
		t.Errorf("RuntimeDataDigest = %s, want %s", got, katDigest)
	}
	padded, err := ReportData("", katNonce, json.RawMessage(katJWK))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(padded); got != katPadded {
		t.Errorf("ReportData = %s, want %s", got, katPadded)
	}
	if got := hex.EncodeToString(TPMReportData(digest)); got != katTPM {
		t.Errorf("TPMReportData = %s, want %s", got, katTPM)
	}
	// The canonical document the digest is over, as Trustee's KBS builds it
	// (trustee kbs/src/attestation/backend.rs primary_runtime_data).
	manual, err := CanonicalSHA384([]byte(`{"additional-evidence":"","nonce":"` + katNonce + `","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}}`))
	if err != nil || hex.EncodeToString(manual) != katDigest {
		t.Errorf("digest of the canonical document = %x (%v), want %s", manual, err, katDigest)
	}
}

func TestPadReportData(t *testing.T) {
	for _, n := range []int{0, 32, 48, 64} {
		in := bytes.Repeat([]byte{0xff}, n)
		out, err := PadReportData(in)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if len(out) != ReportDataSize || !bytes.Equal(out[:n], in) || !bytes.Equal(out[n:], make([]byte, ReportDataSize-n)) {
			t.Errorf("PadReportData(%d bytes) = %x", n, out)
		}
	}
	in := make([]byte, 48)
	out, _ := PadReportData(in)
	out[0] = 1
	if in[0] != 0 {
		t.Error("PadReportData aliases its input")
	}
	if _, err := PadReportData(make([]byte, 65)); err == nil {
		t.Error("65 bytes: want error, truncating would bind less")
	}
}

// TestTPMReportData: Rust's Vec::resize(32, 0), as guest-components' TPM
// attester and Trustee's TPM verifier apply it: longer input is cut, shorter
// input zero-padded, the input never aliased.
func TestTPMReportData(t *testing.T) {
	for _, n := range []int{0, 20, 32, 48, 64} {
		in := make([]byte, n)
		for i := range in {
			in[i] = byte(i + 1)
		}
		out := TPMReportData(in)
		k := min(n, TPMReportDataSize)
		if len(out) != TPMReportDataSize || !bytes.Equal(out[:k], in[:k]) || !bytes.Equal(out[k:], make([]byte, TPMReportDataSize-k)) {
			t.Errorf("TPMReportData(%d bytes) = %x", n, out)
		}
		if n > 0 {
			out[0] = 0xff
			if in[0] == 0xff {
				t.Errorf("TPMReportData(%d bytes) aliases its input", n)
			}
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

package tpm

import (
	"context"
	"os"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

type (
	attestT = tpm2.TPMSAttest
	sigT    = tpm2.TPMTSignature
	publicT = tpm2.TPMTPublic
)

func writeTestFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// FuzzVerify feeds arbitrary evidence to the parser and checks: it never
// panics, and nothing but the seeded genuine evidence is accepted.
func FuzzVerify(f *testing.F) {
	fx := newFixture(f)
	fx.eventLog = testEventLog(f, []byte("firmware"))
	good := fx.evidence(f)
	f.Add(good)
	f.Add([]byte(`{"ak_public":"","tpm_quote":{"signature":"","message":"","pcrs":[]}}`))
	v, err := New(Config{TrustedAKs: [][32]byte{digestOf(f, akKey)}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ev []byte) {
		_, _ = parseEvidence(ev)
		_, _ = v.Verify(context.Background(), ev, fx.reportData, nil)
	})
}

// FuzzTPMStructures fuzzes the TPM structure decoders behind the
// base64 fields directly, where mutations are not wasted on JSON syntax.
func FuzzTPMStructures(f *testing.F) {
	fx := newFixture(f)
	p, err := parseEvidence(fx.evidence(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(p.attestRaw)
	f.Add(testEventLog(f, []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = unmarshalExact[attestT]("message", b)
		_, _ = unmarshalExact[sigT]("signature", b)
		_, _ = unmarshalExact[publicT]("ak_tpm_public", b)
		_, _ = checkEventLog(&parsed{eventLog: b, pcrs: fx.pcrs})
	})
}

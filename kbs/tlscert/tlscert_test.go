package tlscert

import (
	"crypto/x509"
	"testing"
)

func TestSelfSigned(t *testing.T) {
	dir := t.TempDir()
	c1, path, fp1, err := SelfSigned(dir, []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	_, path2, fp2, err := SelfSigned(dir, []string{"other"})
	if err != nil || fp1 != fp2 || path != path2 || len(fp1) != 64 {
		t.Fatalf("certificate not reused: %s %s %v", fp1, fp2, err)
	}
	leaf, err := x509.ParseCertificate(c1.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("localhost"); err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("example.com"); err == nil {
		t.Fatal("unexpected SAN example.com")
	}
}

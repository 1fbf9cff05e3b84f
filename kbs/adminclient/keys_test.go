package adminclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateKeyFiles(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	pubKey, err := GenerateKeyFiles(priv, pub, false)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{priv: 0o600, pub: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %o, want %o", filepath.Base(path), fi.Mode().Perm(), mode)
		}
	}
	key, err := LoadPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !pubKey.Equal(key.Public()) {
		t.Error("loaded private key does not match the returned public key")
	}
	pubPEM, _ := os.ReadFile(pub)
	block, _ := pem.Decode(pubPEM)
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("public key file is not a PUBLIC KEY PEM: %q", pubPEM)
	}
	parsed, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil || !pubKey.Equal(parsed) {
		t.Fatalf("public key file does not hold the key (err %v)", err)
	}

	// Refuse to overwrite either file, and leave both untouched.
	before, _ := os.ReadFile(priv)
	for _, paths := range [][2]string{{priv, filepath.Join(dir, "other.pub")}, {filepath.Join(dir, "other.key"), pub}} {
		_, err := GenerateKeyFiles(paths[0], paths[1], false)
		if err == nil || !strings.Contains(err.Error(), "already exists; pass --force") {
			t.Errorf("GenerateKeyFiles%v: err = %v, want refusal", paths, err)
		}
		for _, p := range paths {
			if p != priv && p != pub {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("refused run still wrote %s", p)
				}
			}
		}
	}
	if after, _ := os.ReadFile(priv); string(after) != string(before) {
		t.Error("refused run changed the private key")
	}

	// --force replaces, and narrows a widened mode back to 0600.
	if err := os.Chmod(priv, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateKeyFiles(priv, pub, true); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(priv); string(after) == string(before) {
		t.Error("--force did not replace the private key")
	}
	if fi, _ := os.Stat(priv); fi.Mode().Perm() != 0o600 {
		t.Errorf("after --force the private key mode is %o, want 600", fi.Mode().Perm())
	}

	if _, err := GenerateKeyFiles(priv, priv, true); err == nil {
		t.Error("accepted the same path for both keys")
	}
}

func TestLoadPrivateKeyErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	if _, err := GenerateKeyFiles(filepath.Join(dir, "ok.key"), filepath.Join(dir, "ok.pub"), false); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, wantErr string
	}{
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"not PEM", write("text", []byte("hello")), `want a PEM "PRIVATE KEY" block`},
		{"public key given", filepath.Join(dir, "ok.pub"), `want a PEM "PRIVATE KEY" block`},
		{"garbage DER", write("bad", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})), "PKCS#8 Ed25519"},
		{"ECDSA key", write("ec", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})), "is a *ecdsa.PrivateKey"},
		{"huge file", write("huge", make([]byte, 20<<10)), "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadPrivateKey(tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("err = %v, want it to name %s and contain %q", err, tc.path, tc.wantErr)
			}
		})
	}
}

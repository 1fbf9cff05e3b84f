package main

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/api/kbstypes/sealed"
)

const (
	sealURI = "kbs:///default/app/db-password"
	sealKid = "kbs:///default/sealed-secret-keys/signing"
)

// keygen runs kbsctl secret keygen and returns the private JWK's path and
// the public JWK it printed.
func keygen(t *testing.T) (string, []byte) {
	t.Helper()
	priv := filepath.Join(t.TempDir(), "signing.jwk")
	pub := mustRun(t, nil, "", "secret", "keygen", "--out", priv)
	return priv, []byte(pub)
}

// TestSecretSeal: text, json and yaml output each hold a sealed string that
// parses, names the resource, carries --kid and verifies with the public JWK
// keygen printed.
func TestSecretSeal(t *testing.T) {
	priv, pubJWK := keygen(t)
	pub, err := sealed.ParsePublicJWK(pubJWK)
	if err != nil {
		t.Fatalf("keygen printed %q: %v", pubJWK, err)
	}
	check := func(t *testing.T, s string) {
		t.Helper()
		p, err := sealed.Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		if err := p.Verify(pub); err != nil {
			t.Errorf("Verify: %v", err)
		}
		if p.Header.Kid != sealKid {
			t.Errorf("kid = %q", p.Header.Kid)
		}
		if res, err := p.Secret.Resource(); err != nil || res != (kbstypes.ResourcePath{Repository: "default", Type: "app", Tag: "db-password"}) {
			t.Errorf("resource = %v, %v", res, err)
		}
	}
	args := []string{"secret", "seal", sealURI, "--signing-key", priv, "--kid", sealKid}

	t.Run("text", func(t *testing.T) {
		out := mustRun(t, nil, "", args...)
		if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
			t.Errorf("want one line, got %q", out)
		}
		check(t, strings.TrimSuffix(out, "\n"))
	})
	t.Run("json", func(t *testing.T) {
		var got map[string]string
		if err := json.Unmarshal([]byte(mustRun(t, nil, "", append([]string{"-o", "json"}, args...)...)), &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got["resource"] != sealURI || got["kid"] != sealKid {
			t.Errorf("json = %v", got)
		}
		check(t, got["sealed"])
	})
	t.Run("yaml", func(t *testing.T) {
		out := mustRun(t, nil, "", append([]string{"-o", "yaml"}, args...)...)
		var s struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Type       string            `json:"type"`
			Metadata   map[string]any    `json:"metadata"`
			StringData map[string]string `json:"stringData"`
		}
		if err := yaml.UnmarshalStrict([]byte(out), &s); err != nil {
			t.Fatalf("not a YAML Secret: %v\n%s", err, out)
		}
		if s.APIVersion != "v1" || s.Kind != "Secret" || s.Type != "Opaque" || len(s.Metadata) != 1 ||
			s.Metadata["name"] != "db-password" || len(s.StringData) != 1 {
			t.Fatalf("Secret = %+v\n%s", s, out)
		}
		check(t, s.StringData["db-password"])
	})
	t.Run("yaml with --name and --key", func(t *testing.T) {
		out := mustRun(t, nil, "", append([]string{"-o", "yaml"}, append(args, "--name", "db.creds", "--key", "PASSWORD")...)...)
		var s struct {
			Metadata   struct{ Name string } `json:"metadata"`
			StringData map[string]string     `json:"stringData"`
		}
		if err := yaml.Unmarshal([]byte(out), &s); err != nil {
			t.Fatal(err)
		}
		if s.Metadata.Name != "db.creds" {
			t.Errorf("name = %q", s.Metadata.Name)
		}
		check(t, s.StringData["PASSWORD"])
	})
	t.Run("PEM key", func(t *testing.T) {
		key, err := sealed.ParseSigningKey(mustReadFile(t, priv))
		if err != nil {
			t.Fatal(err)
		}
		out := mustRun(t, nil, "", "secret", "seal", sealURI, "--signing-key", writeFile(t, pemKey(t, key)), "--kid", sealKid)
		check(t, strings.TrimSpace(out))
	})
}

// TestSecretSealUnsigned: the placeholder form parses, names the resource
// and is reported as unsigned by Verify.
func TestSecretSealUnsigned(t *testing.T) {
	out := strings.TrimSpace(mustRun(t, nil, "", "secret", "seal", sealURI, "--unsigned"))
	if !strings.HasPrefix(out, "sealed.fakejwsheader.") || !strings.HasSuffix(out, ".fakesignature") {
		t.Fatalf("unsigned = %q", out)
	}
	p, err := sealed.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if p.Header != nil || p.Secret.Name != sealURI || p.Secret.Provider != "kbs" || p.Secret.Type != "vault" {
		t.Errorf("parsed = %+v", p)
	}
	if err := p.Verify(nil); !errors.Is(err, sealed.ErrUnsigned) {
		t.Errorf("Verify = %v, want ErrUnsigned", err)
	}
	out, _, _ = run(t, nil, "", "secret", "seal", "--help")
	if !strings.Contains(out, "accepts any sealed") {
		t.Errorf("help does not warn about --unsigned:\n%s", out)
	}
}

func TestSecretKeygen(t *testing.T) {
	priv, pubJWK := keygen(t)
	if fi, err := os.Stat(priv); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private JWK: %v %v", fi, err)
	}
	if strings.Contains(string(pubJWK), `"d"`) {
		t.Errorf("printed JWK carries the private key: %s", pubJWK)
	}
	key, err := sealed.ParseSigningKey(mustReadFile(t, priv))
	if err != nil {
		t.Fatal(err)
	}
	if pub, _ := sealed.ParsePublicJWK(pubJWK); !key.PublicKey.Equal(pub) {
		t.Error("printed public JWK is not the written key's")
	}
	if _, errOut, code := run(t, nil, "", "secret", "keygen", "--out", priv); code != exitFailure || !strings.Contains(errOut, "already exists; pass --force") {
		t.Errorf("overwrite without --force: exit %d, %s", code, errOut)
	}
	os.Chmod(priv, 0o644)
	var res struct {
		PrivateKey string     `json:"private_key"`
		PublicJWK  sealed.JWK `json:"public_jwk"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, nil, "", "-o", "json", "secret", "keygen", "--out", priv, "--force", "--kid", "k1")), &res); err != nil {
		t.Fatal(err)
	}
	if res.PrivateKey != priv || res.PublicJWK.Kid != "k1" || res.PublicJWK.D != "" {
		t.Errorf("json keygen = %+v", res)
	}
	if fi, _ := os.Stat(priv); fi.Mode().Perm() != 0o600 {
		t.Errorf("--force left mode %v", fi.Mode().Perm())
	}
}

func TestSecretErrors(t *testing.T) {
	priv, pubJWK := keygen(t)
	pubFile := writeFile(t, string(pubJWK))
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"bare path", []string{"secret", "seal", "default/app/x", "--unsigned"}, exitUsage, "want kbs:///<repository>/<type>/<tag>"},
		{"two segments", []string{"secret", "seal", "kbs:///default/x", "--unsigned"}, exitUsage, "three segments"},
		{"no argument", []string{"secret", "seal", "--unsigned"}, exitUsage, "accepts 1 arg"},
		{"no key", []string{"secret", "seal", sealURI}, exitUsage, "--signing-key FILE is required"},
		{"no kid", []string{"secret", "seal", sealURI, "--signing-key", priv}, exitUsage, "--kid is required"},
		{"unsigned with a key", []string{"secret", "seal", sealURI, "--unsigned", "--signing-key", priv}, exitUsage, "--unsigned takes neither"},
		{"missing key file", []string{"secret", "seal", sealURI, "--signing-key", "/nonexistent/k.jwk", "--kid", sealKid}, exitFailure,
			"--signing-key /nonexistent/k.jwk does not exist (want an EC P-256 private key"},
		{"public JWK as signing key", []string{"secret", "seal", sealURI, "--signing-key", pubFile, "--kid", sealKid}, exitFailure,
			"--signing-key " + pubFile + `: JWK has no "d"`},
		{"garbage key file", []string{"secret", "seal", sealURI, "--signing-key", writeFile(t, "junk"), "--kid", sealKid}, exitFailure,
			"neither a JWK nor a PEM private key"},
		{"bad --name", []string{"-o", "yaml", "secret", "seal", sealURI, "--unsigned", "--name", "DB"}, exitUsage, `--name "DB" is not a Kubernetes name`},
		{"tag not a Kubernetes name", []string{"-o", "yaml", "secret", "seal", "kbs:///default/app/DB_pw", "--unsigned"}, exitUsage, "pass --name"},
		{"bad --key", []string{"-o", "yaml", "secret", "seal", sealURI, "--unsigned", "--key", "a/b"}, exitUsage, `--key "a/b"`},
		{"--name without yaml", []string{"secret", "seal", sealURI, "--unsigned", "--name", "db"}, exitUsage, "add -o yaml"},
		{"yaml elsewhere", []string{"-o", "yaml", "secret", "keygen", "--out", "x"}, exitUsage, "only kbsctl secret seal writes yaml"},
		{"keygen without --out", []string{"secret", "keygen"}, exitUsage, "--out FILE is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, nil, "", tc.args...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit %d and %q", code, errOut, tc.wantCode, tc.wantErr)
			}
			if out != "" {
				t.Errorf("a failed command wrote to stdout: %q", out)
			}
		})
	}
}

func pemKey(t *testing.T, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

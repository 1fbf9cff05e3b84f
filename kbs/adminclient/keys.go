package adminclient

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// maxKeyFile bounds key files read from disk; an Ed25519 PEM is ~120 bytes.
const maxKeyFile = 16 << 10

// GenerateKeyFiles creates an Ed25519 admin key pair: the private key as a
// PKCS#8 "PRIVATE KEY" PEM with mode 0600, the public key as a PKIX
// "PUBLIC KEY" PEM (what the KBS takes with --admin-public-key) with mode
// 0644. Existing files are an error unless force is set; both paths are
// checked before either is written, so a refusal leaves nothing half-done.
func GenerateKeyFiles(privatePath, publicPath string, force bool) (ed25519.PublicKey, error) {
	if privatePath == publicPath {
		return nil, errors.New("the private and public key paths are the same file")
	}
	if !force {
		for _, p := range []string{privatePath, publicPath} {
			if err := checkAbsent(p); err != nil {
				return nil, err
			}
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate Ed25519 key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	if err := writeNew(privatePath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(publicPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return pub, nil
}

// WriteKeyFile writes data to a fresh file path with exactly mode perm, as
// GenerateKeyFiles writes its keys: an existing path is an error unless
// force is set, and is then replaced, never written through.
func WriteKeyFile(path string, data []byte, perm fs.FileMode, force bool) error {
	if !force {
		if err := checkAbsent(path); err != nil {
			return err
		}
	}
	return writeNew(path, data, perm)
}

func checkAbsent(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists; pass --force to overwrite it", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check %s: %w", path, err)
	}
	return nil
}

// writeNew writes a fresh file with exactly mode perm. An existing file
// (only reached with force) is removed first: opening it with O_TRUNC would
// keep its old, possibly wider, permissions.
func writeNew(path string, data []byte, perm fs.FileMode) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	// The umask may have narrowed perm; make the mode exact.
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// LoadPrivateKey reads an Ed25519 admin private key written by
// GenerateKeyFiles (or `openssl genpkey -algorithm ed25519`).
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	const want = `want a PEM "PRIVATE KEY" block holding a PKCS#8 Ed25519 key, as written by "kbsctl keygen"`
	data, err := readSmall(path)
	if err != nil {
		return nil, fmt.Errorf("admin key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("admin key %s: %s", path, want)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("admin key %s: %s: %w", path, want, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("admin key %s is a %T; %s", path, key, want)
	}
	return priv, nil
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("%s is larger than %d bytes; is it really a key file?", path, maxKeyFile)
	}
	return data, nil
}

// Package root keeps the test-only certificate hierarchies of the
// emulated TEE platforms (emulated/snp, emulated/tdx) on disk: one
// directory per platform, created once under a lock file and afterwards
// loaded as it is, plus the PEM and certificate helpers both use. What the
// hierarchies contain stays with each platform.
package root

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/internal/atomicfile"
)

// lockFile serializes creation among concurrent callers.
const lockFile = ".lock"

// LoadOrCreate creates dir (0700) if needed and, holding an exclusive lock
// on dir/.lock, returns load's result, or create's when load's error is
// os.ErrNotExist. Concurrent callers (several shims starting pods) thus
// share one hierarchy. what names the hierarchy in errors ("emulated SNP
// chain").
func LoadOrCreate[T any](dir, what string, load, create func() (T, error)) (T, error) {
	var zero T
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return zero, fmt.Errorf("%s directory: %w", what, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return zero, fmt.Errorf("%s lock: %w", what, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return zero, fmt.Errorf("%s lock: %w", what, err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // released on close anyway

	r, err := load()
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return r, err
	}
	return create()
}

// ReadFiles reads the named files of dir, in order, stopping at the first
// error (a missing file is os.ErrNotExist). what names the hierarchy in
// errors.
func ReadFiles(dir, what string, names ...string) ([][]byte, error) {
	out := make([][]byte, 0, len(names))
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// File is one file WriteFiles writes.
type File struct {
	Name string
	Data []byte
	Mode os.FileMode
}

// WriteFiles writes files to dir (which must exist) in order, each one
// atomically and durably (atomicfile.Write).
func WriteFiles(dir string, files ...File) error {
	for _, f := range files {
		if err := atomicfile.Write(filepath.Join(dir, f.Name), f.Data, f.Mode); err != nil {
			return err
		}
	}
	return nil
}

// MarshalKeys encodes private keys as concatenated PKCS #8 PEM blocks.
func MarshalKeys[K any](keys ...K) ([]byte, error) {
	var out []byte
	for _, key := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...)
	}
	return out, nil
}

// ParseKeys decodes the PKCS #8 PEM blocks of data, in order.
func ParseKeys(data []byte) ([]any, error) {
	var keys []any
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return keys, nil
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
}

// CreateCert issues tmpl for pub, signed by signer as parent.
func CreateCert(tmpl, parent *x509.Certificate, pub any, signer crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// PEMCert is c in PEM.
func PEMCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// ParseCerts decodes the PEM certificates of data, in order.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// Package keyfile keeps the KBS's secret files (token signing key, storage
// key, TLS key) in its data directory: created once with mode 0600, written
// atomically so a crash never leaves half a key, and reused on restart.
package keyfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cloak-containers/cloak/internal/atomicfile"
)

// LoadOrCreate returns the contents of path. If the file does not exist it
// calls create and stores the result with mode 0600 first.
func LoadOrCreate(path string, create func() ([]byte, error)) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		return data, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	data, err = create()
	if err != nil {
		return nil, err
	}
	if err := Write(path, data); err != nil {
		return nil, err
	}
	return data, nil
}

// Write stores data at path with mode 0600 (atomicfile.Write: temporary
// file, fsync, rename, directory fsync), creating its directory (0700).
func Write(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create directory for %s: %w", path, err)
	}
	return atomicfile.Write(path, data, 0o600)
}

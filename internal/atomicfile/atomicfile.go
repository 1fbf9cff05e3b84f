// Package atomicfile replaces a file so that after a crash a reader finds
// the old content or the new, never a part, and that the new content is on
// disk when Write returns. It is neutral code, imported by the guest
// (guest-image/pull), the host (emulated/root) and the KBS (kbs/keyfile,
// kbs/verifier/collateral) alike, which is why it lives under internal/ and
// imports only the standard library (docs/architecture.md, "Source tree and
// import rule").
//
// github.com/google/renameio does the same except the directory fsync,
// without which the rename itself may not survive a power loss.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write stores data at path with permissions perm (umask not applied): it
// writes a temporary file in path's directory (which must exist), fsyncs
// it, renames it over path and fsyncs the directory. On error path is
// unchanged and the temporary file is removed.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	renamed := false
	defer func() {
		if !renamed {
			os.Remove(tmp.Name())
		}
	}()
	err = tmp.Chmod(perm)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	renamed = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

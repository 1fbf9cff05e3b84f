// Package testutil holds helpers that tests in several packages share.
package testutil

import (
	"os"
	"testing"
)

// MemTempDir is a temporary directory on tmpfs (/dev/shm) when the machine
// has one, else t.TempDir(). Fuzz targets that write files or sync a
// database per input stall on a disk-backed /tmp: the KBS store's fsync per
// audit entry held FuzzAttestBody to ~40 inputs a second. The guest unpacks
// images into tmpfs too, so tmpfs is also the realistic place for those.
func MemTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "cloak-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

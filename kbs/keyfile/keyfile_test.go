package keyfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "key")
	calls := 0
	create := func() ([]byte, error) { calls++; return []byte("k1"), nil }
	for range 2 {
		got, err := LoadOrCreate(path, create)
		if err != nil || string(got) != "k1" {
			t.Fatalf("LoadOrCreate = %q, %v", got, err)
		}
	}
	if calls != 1 {
		t.Fatalf("create called %d times, want 1", calls)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	_, err = LoadOrCreate(filepath.Join(t.TempDir(), "x"), func() ([]byte, error) { return nil, errors.New("boom") })
	if err == nil || err.Error() != "boom" {
		t.Fatalf("create error not returned: %v", err)
	}
}

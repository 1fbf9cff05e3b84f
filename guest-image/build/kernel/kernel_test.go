package kernel

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseMadison(t *testing.T) {
	out := []byte(`linux-image-6.12.95+deb12-cloud-amd64 | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-image-6.12.90+deb12.1-cloud-amd64 | 6.12.90-2~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-image-6.12.117+deb12-cloud-amd64 | 6.12.117-1~deb12u1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-6.12.95+deb12-cloud-amd64-dbg | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-image-6.12.95+deb12-cloud-amd64-unsigned | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
garbage line
`)
	got := parseMadison(out, "bookworm-backports")
	want := []candidate{
		{"linux-image-6.12.95+deb12-cloud-amd64", "6.12.95-1~bpo12+1"},
		{"linux-image-6.12.90+deb12.1-cloud-amd64", "6.12.90-2~bpo12+1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("candidates = %v, want %v", got, want)
	}
}

func TestParseSHA256Field(t *testing.T) {
	const sum = "69c92f43b23821de79576fa4d7c86e2924ae2c1b247a47cc5ed9339e220fbcb7"
	tests := []struct {
		name, in, want, wantErr string
	}{
		{"present", "Package: x\nSHA256: " + sum + "\nSize: 1\n", sum, ""},
		{"absent", "Package: x\nSize: 1\n", "", "no SHA256"},
		{"short", "SHA256: abcd\n", "", "not a SHA-256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSHA256Field([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestNewestUsesDebianOrdering(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("dpkg is not installed: Debian version ordering needs it")
	}
	cands := []candidate{
		{"a", "6.12.9-1~bpo12+1"},
		{"b", "6.12.90-2~bpo12+1"},
		{"c", "6.12.90-1~bpo12+1"},
		{"d", "6.12.90-2~bpo12"},
		{"e", "6.12.43-1~bpo12+1"},
	}
	got, err := newest(context.Background(), cands)
	if err != nil {
		t.Fatal(err)
	}
	if got.name != "b" {
		t.Fatalf("newest = %v, want b (6.12.90-2~bpo12+1)", got)
	}
}

// A cached exact version is served without running any command: with an
// empty PATH, apt-get/dpkg could not even be found.
func TestFetchCachedRunsNothing(t *testing.T) {
	cache := t.TempDir()
	const version, release = "6.12.95-1~bpo12+1", "6.12.95+deb12-cloud-amd64"
	dir := filepath.Join(cache, "kernel", version)
	if err := os.MkdirAll(filepath.Join(dir, "root", "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "root", "boot", "vmlinuz-"+release), []byte("bzImage"), 0o644); err != nil {
		t.Fatal(err)
	}
	meta := `{"package":"linux-image-` + release + `","version":"` + version + `","release":"` + release + `","deb_sha256":"00"}`
	if err := os.WriteFile(filepath.Join(dir, metaFile), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", "")
	k, err := Fetch(context.Background(), Options{CacheDir: cache, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != release || k.Vmlinuz() != filepath.Join(dir, "root", "boot", "vmlinuz-"+release) {
		t.Fatalf("kernel = %+v, vmlinuz %s", k, k.Vmlinuz())
	}
	if want := filepath.Join(dir, "root", "lib", "modules", release); k.ModulesDir() != want {
		t.Fatalf("modules dir = %s, want %s", k.ModulesDir(), want)
	}
}

// An incomplete cache entry (no kernel.json, as after an interrupted
// fetch) is not taken for a cached kernel.
func TestFetchIgnoresIncompleteCache(t *testing.T) {
	cache := t.TempDir()
	if err := os.MkdirAll(filepath.Join(cache, "kernel", "1.0-1", "root"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", "")
	if _, err := Fetch(context.Background(), Options{CacheDir: cache, Version: "1.0-1"}); err == nil || !strings.Contains(err.Error(), "apt-cache") {
		t.Fatalf("err = %v, want an attempt to ask apt-cache", err)
	}
}

package rootimg

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/guest-image/build/initramfs"
)

func tree(t *testing.T, order []int) *initramfs.Archive {
	t.Helper()
	var a initramfs.Archive
	files := []func() error{
		func() error { return a.File("/usr/bin/agent", 0o755, bytes.Repeat([]byte("agent"), 20000)) },
		func() error { return a.File("/etc/ssl/certs/ca.crt", 0o644, []byte("ca")) },
		func() error { return a.Symlink("/etc/resolv.conf", "/run/etc/resolv.conf") },
		func() error { return a.Dir("/tmp", 0o1777) },
	}
	for _, i := range order {
		if err := files[i](); err != nil {
			t.Fatal(err)
		}
	}
	return &a
}

func TestBuildReproducibleAndVerifiable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	ia, err := Build(ctx, tree(t, []int{0, 1, 2, 3}), a)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := Build(ctx, tree(t, []int{3, 2, 1, 0}), b)
	if err != nil {
		t.Fatal(err)
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ba, bb) || *ia != *ib {
		t.Fatalf("two builds of the same tree differ: %+v vs %+v", ia, ib)
	}
	if ia.DataSize%BlockSize != 0 || ia.Size <= ia.DataSize || int64(len(ba)) != ia.Size {
		t.Fatalf("layout %+v, file %d bytes", ia, len(ba))
	}
	if err := Verify(ctx, a, ia); err != nil {
		t.Fatal(err)
	}
	// Another tree gives another root hash.
	var other initramfs.Archive
	if err := other.File("/usr/bin/agent", 0o755, []byte("other")); err != nil {
		t.Fatal(err)
	}
	io, err := Build(ctx, &other, filepath.Join(dir, "o.img"))
	if err != nil {
		t.Fatal(err)
	}
	if io.RootHash == ia.RootHash || io.Salt == ia.Salt {
		t.Error("different trees share a root hash or salt")
	}
}

func TestVerifyRefusesAnyChangedByte(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	good := filepath.Join(dir, "root.img")
	im, err := Build(ctx, tree(t, []int{0, 1, 2, 3}), good)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(good)
	for _, off := range []int64{0, 1024, im.DataSize / 2, im.DataSize - 1, im.DataSize, im.Size - 1} {
		t.Run(fmt.Sprint(off), func(t *testing.T) {
			b := bytes.Clone(orig)
			b[off] ^= 0x01
			p := filepath.Join(t.TempDir(), "root.img")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			err := Verify(ctx, p, im)
			if err == nil || !strings.Contains(err.Error(), "does not match its root hash") {
				t.Fatalf("byte %d flipped: err %v", off, err)
			}
		})
	}
	bad := *im
	bad.RootHash = "nothex"
	if err := Verify(ctx, good, &bad); err == nil || !strings.Contains(err.Error(), "not a SHA-256") {
		t.Errorf("bad root hash: %v", err)
	}
}

func TestKernelArgs(t *testing.T) {
	im := &Image{DataSize: 8 * BlockSize, RootHash: strings.Repeat("ab", 32), Salt: strings.Repeat("cd", 32)}
	got := im.KernelArgs("/usr/bin/cloak-agent")
	want := `dm-mod.waitfor=/dev/vda dm-mod.create="root,,,ro,0 64 verity 1 /dev/vda /dev/vda 4096 4096 8 8 sha256 ` +
		strings.Repeat("ab", 32) + " " + strings.Repeat("cd", 32) + ` 1 panic_on_corruption" root=/dev/dm-0 rootfstype=erofs ro init=/usr/bin/cloak-agent`
	if got != want {
		t.Fatalf("kernel args\n got %s\nwant %s", got, want)
	}
}

func TestParseRootHash(t *testing.T) {
	h := strings.Repeat("0f", 32)
	if got, err := parseRootHash([]byte("VERITY header\nRoot hash:      \t" + h + "\n")); err != nil || got != h {
		t.Fatalf("got %q, %v", got, err)
	}
	for _, out := range []string{"", "Root hash: xyz\n", "Root hash: " + h[:10] + "\n"} {
		if _, err := parseRootHash([]byte(out)); err == nil {
			t.Errorf("%q accepted", out)
		}
	}
}

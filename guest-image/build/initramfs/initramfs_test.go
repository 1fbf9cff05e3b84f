package initramfs

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// sample builds the same small tree in a scrambled insertion order.
func sample(t *testing.T) *Archive {
	t.Helper()
	var a Archive
	steps := []error{
		a.File("/usr/bin/runc", 0o755, []byte("runc-binary")),
		a.Symlink("/bin", "usr/bin"),
		a.Dir("/tmp", 0o1777),
		a.File("init", 0o755, []byte("#!init")),
		a.File("/etc/ssl/certs/ca-certificates.crt", 0o644, []byte("-----BEGIN CERTIFICATE-----\n")),
		a.Dir("/proc", 0o555),
		a.File("/empty", 0o600, nil),
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	return &a
}

type readEntry struct {
	name, link, data string
	mode             cpio.FileMode
	inode            int64
	uid, gid         int
	mtime            int64
}

func readAll(t *testing.T, b []byte) []readEntry {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(b))
	var out []readEntry
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, readEntry{h.Name, h.Linkname, string(data), h.Mode, h.Inode, h.Uid, h.Guid, h.ModTime.Unix()})
	}
}

func TestCpioRoundTrip(t *testing.T) {
	b, err := sample(t).Cpio()
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, b)
	want := []readEntry{
		{name: "bin", link: "usr/bin", mode: cpio.TypeSymlink | 0o777},
		{name: "empty", mode: cpio.TypeReg | 0o600},
		{name: "etc", mode: cpio.TypeDir | 0o755},
		{name: "etc/ssl", mode: cpio.TypeDir | 0o755},
		{name: "etc/ssl/certs", mode: cpio.TypeDir | 0o755},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: cpio.TypeReg | 0o644, data: "-----BEGIN CERTIFICATE-----\n"},
		{name: "init", mode: cpio.TypeReg | 0o755, data: "#!init"},
		{name: "proc", mode: cpio.TypeDir | 0o555},
		{name: "tmp", mode: cpio.TypeDir | 0o1777},
		{name: "usr", mode: cpio.TypeDir | 0o755},
		{name: "usr/bin", mode: cpio.TypeDir | 0o755},
		{name: "usr/bin/runc", mode: cpio.TypeReg | 0o755, data: "runc-binary"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		w := want[i]
		w.inode = int64(i + 1)
		if got[i] != w {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], w)
		}
	}
}

// The golden archive pins the exact bytes: any change in ordering, header
// fields or padding shows up as a diff, not as a silent measurement change.
func TestCpioGolden(t *testing.T) {
	b, err := sample(t).Cpio()
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/sample.cpio"
	if *update {
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("cpio differs from %s (run with -update if the change is intended)", golden)
	}
}

func TestAddErrors(t *testing.T) {
	tests := []struct {
		name    string
		add     func(a *Archive) error
		wantErr string
	}{
		{"dotdot", func(a *Archive) error { return a.File("/usr/../etc/x", 0o644, nil) }, "clean"},
		{"root", func(a *Archive) error { return a.Dir("/", 0o755) }, "clean"},
		{"duplicate file", func(a *Archive) error {
			a.File("/a", 0o644, nil)
			return a.File("/a", 0o644, []byte("x"))
		}, "added twice"},
		{"file as parent", func(a *Archive) error {
			a.File("/a", 0o644, nil)
			return a.File("/a/b", 0o644, nil)
		}, "not a directory"},
		{"empty symlink", func(a *Archive) error { return a.Symlink("/l", "") }, "empty target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Archive
			if err := tt.add(&a); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestDirTwiceKeepsLastMode(t *testing.T) {
	var a Archive
	if err := a.File("/tmp/x", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Dir("/tmp", 0o1777); err != nil {
		t.Fatal(err)
	}
	b, err := a.Cpio()
	if err != nil {
		t.Fatal(err)
	}
	if e := readAll(t, b)[0]; e.name != "tmp" || e.mode != cpio.TypeDir|0o1777 {
		t.Fatalf("tmp = %+v, want mode 01777", e)
	}
}

func TestCompressDeterministicAndLossless(t *testing.T) {
	in := bytes.Repeat([]byte("cloak initramfs "), 1<<16)
	a, err := Compress(in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compress(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two compressions of the same input differ")
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	out, err := dec.DecodeAll(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, in) {
		t.Fatal("round trip changed the data")
	}
}

package pull

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/internal/testutil"
)

func TestUnpackRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		layers  [][]entry
		wantErr string
	}{
		{"dotdot", [][]entry{{file("a/../../x", "x", 0o644)}}, "escapes the rootfs"},
		{"absolute symlink followed", [][]entry{{symlink("etc", "/")}, {file("etc/x", "x", 0o644)}}, "entry etc/x"},
		{"relative symlink out", [][]entry{{symlink("up", "../../../..")}, {file("up/x", "x", 0o644)}}, "entry up/x"},
		{"symlink as parent dir in same layer", [][]entry{{symlink("d", "/tmp"), dir("d/sub/")}}, "entry d/sub/"},
		{"hardlink out", [][]entry{{hardlink("h", "../../etc/passwd")}}, "hardlink target"},
		{"hardlink through symlink", [][]entry{{symlink("s", "/etc"), hardlink("h", "s/passwd")}}, "entry h"},
		{"whiteout through symlink", [][]entry{{symlink("s", "/")}, {file("s/.wh.etc", "", 0o644)}}, "whiteout s/etc"},
		{"fifo", [][]entry{{{name: "p", typ: '6', mode: 0o644}}}, "FIFOs are not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			// A file beside the rootfs that an escape would reach.
			os.WriteFile(filepath.Join(parent, "x"), []byte("outside"), 0o644)
			root := filepath.Join(parent, "rootfs")
			os.Mkdir(root, 0o755)
			u, err := newUnpacker(root, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer u.close()
			for _, l := range tc.layers {
				if err = u.layer(bytes.NewReader(tarOf(t, l...))); err != nil {
					break
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
			}
			if b, _ := os.ReadFile(filepath.Join(parent, "x")); string(b) != "outside" {
				t.Errorf("file outside the rootfs changed: %q", b)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 2 {
				t.Errorf("entries beside the rootfs: %v", entries)
			}
		})
	}
}

func TestUnpackReplaces(t *testing.T) {
	root := t.TempDir()
	u, err := newUnpacker(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	layers := [][]entry{
		{symlink("f", "/etc/passwd"), file("d", "file", 0o644), dir("keep/"), file("keep/a", "a", 0o644)},
		// A file over a symlink replaces the link (never writes through
		// it); a directory over a file replaces it; directories merge.
		{file("f", "new", 0o640), dir("d/"), dir("keep/"), file("keep/b", "b", 0o644),
			entry{name: "cap", body: "c", typ: '0', mode: 0o755, xattrs: map[string]string{"user.test": "v"}}},
	}
	for _, l := range layers {
		if err := u.layer(bytes.NewReader(tarOf(t, l...))); err != nil {
			t.Fatal(err)
		}
	}
	checkTree(t, root, map[string]string{"f": "file 0640 0 new", "keep/a": "file 0644 0 a", "keep/b": "file 0644 0 b"}, nil)
	if fi, err := os.Lstat(filepath.Join(root, "d")); err != nil || !fi.IsDir() {
		t.Errorf("d = %v, %v; want a directory", fi, err)
	}
}

func TestCleanEntryPath(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"a/b", "a/b", ""},
		{"./a//b/", "a/b", ""},
		{"/abs/path", "abs/path", ""},
		{".", ".", ""},
		{"a/../b", "", "escapes"},
		{"..", "", "escapes"},
		{"a\x00b", "", "NUL"},
		{strings.Repeat("a", maxPathLength+1), "", "limit"},
	}
	for _, tc := range tests {
		got, err := cleanEntryPath(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("cleanEntryPath(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cleanEntryPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// FuzzUnpack feeds arbitrary tar streams to the unpacker (two layers of
// them, so links from the first are used by the second) and checks that
// nothing outside the rootfs is touched.
func FuzzUnpack(f *testing.F) {
	f.Add(tarOf(f, symlink("s", "/"), file("s/x", "x", 0o644)), tarOf(f, file("s/.wh.x", "", 0o644)))
	f.Add(tarOf(f, symlink("up", "../.."), dir("d/")), tarOf(f, file("up/x", "x", 0o644), file("d/.wh..wh..opq", "", 0o644)))
	f.Add(tarOf(f, file("a", "a", 0o644), hardlink("b", "a")), tarOf(f, file("b", "b", 0o4755)))
	f.Fuzz(func(t *testing.T, layer1, layer2 []byte) {
		parent := testutil.MemTempDir(t)
		root := filepath.Join(parent, "rootfs")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(parent, "x"), []byte("outside"), 0o644)
		u, err := newUnpacker(root, Options{MaxUnpackedBytes: 1 << 20, MaxFiles: 1000})
		if err != nil {
			t.Fatal(err)
		}
		defer u.close()
		if u.layer(bytes.NewReader(layer1)) == nil {
			u.layer(bytes.NewReader(layer2))
		}
		entries, _ := os.ReadDir(parent)
		if b, _ := os.ReadFile(filepath.Join(parent, "x")); string(b) != "outside" || len(entries) != 2 {
			t.Fatalf("unpacking touched the rootfs's parent: %v", entries)
		}
		if u.bytes > 1<<20 || u.files > 1000 {
			t.Fatalf("limits exceeded: %d bytes, %d files", u.bytes, u.files)
		}
	})
}

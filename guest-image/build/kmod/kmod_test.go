package kmod

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

func loadFixture(t *testing.T) Deps {
	t.Helper()
	f, err := os.Open("testdata/modules.dep")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := ParseDep(f)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestResolve(t *testing.T) {
	deps := loadFixture(t)
	tests := []struct {
		name    string
		wanted  []string
		want    []string // base names in load order
		wantErr string
	}{
		{"no deps", []string{"overlay"}, []string{"overlay.ko.xz"}, ""},
		{"chain", []string{"virtio_net"},
			[]string{"failover.ko.xz", "net_failover.ko.xz", "virtio_net.ko.xz"}, ""},
		{"shared deps once", []string{"vmw_vsock_virtio_transport", "vmw_vsock_virtio_transport_common", "vsock"},
			[]string{"vsock.ko.xz", "vmw_vsock_virtio_transport_common.ko.xz", "vmw_vsock_virtio_transport.ko.xz"}, ""},
		{"guest default", []string{"virtio_net", "overlay", "vmw_vsock_virtio_transport"},
			[]string{"failover.ko.xz", "net_failover.ko.xz", "virtio_net.ko.xz", "overlay.ko.xz",
				"vsock.ko.xz", "vmw_vsock_virtio_transport_common.ko.xz", "vmw_vsock_virtio_transport.ko.xz"}, ""},
		{"dash and suffix spelling", []string{"vhost-vsock.ko.xz"},
			[]string{"vsock.ko.xz", "vmw_vsock_virtio_transport_common.ko.xz", "vhost_iotlb.ko.xz", "vhost.ko.xz", "vhost_vsock.ko.xz"}, ""},
		{"unknown", []string{"virtio_console"}, nil, `"virtio_console" is not in modules.dep`},
		{"missing dependency", []string{"broken"}, nil, `"missing", needed by broken`},
		{"cycle", []string{"cycle_a"}, nil, "dependency cycle: cycle_a -> cycle_b -> cycle_a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := deps.Resolve(tt.wanted)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range got {
				names = append(names, filepath.Base(e.Path))
			}
			if !reflect.DeepEqual(names, tt.want) {
				t.Fatalf("order = %v, want %v", names, tt.want)
			}
		})
	}
}

func TestParseDepRejectsGarbage(t *testing.T) {
	if _, err := ParseDep(strings.NewReader("kernel/a.ko.xz\n")); err == nil {
		t.Fatal("line without colon accepted")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	elf := append([]byte("\x7fELF"), bytes.Repeat([]byte{0xcc}, 1000)...)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var xzbuf bytes.Buffer
	w, err := xz.NewWriter(&xzbuf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(elf)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	write("a.ko.xz", xzbuf.Bytes())
	write("b.ko", elf)
	write("c.ko.zst", elf)
	write("d.ko.xz", []byte("not xz"))
	write("e.ko", []byte("not elf"))

	tests := []struct {
		rel     string
		wantErr string
	}{
		{"a.ko.xz", ""},
		{"b.ko", ""},
		{"c.ko.zst", "unsupported compression"},
		{"d.ko.xz", "xz"},
		{"e.ko", "not an ELF"},
		{"../a.ko.xz", "leaves the modules directory"},
	}
	for _, tt := range tests {
		t.Run(tt.rel, func(t *testing.T) {
			got, err := Load(dir, tt.rel)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, elf) {
				t.Fatalf("content differs")
			}
		})
	}
}

// modules.dep comes out of a downloaded package; parsing and resolving must
// not hang or panic on any input.
func FuzzParseDepResolve(f *testing.F) {
	seed, err := os.ReadFile("testdata/modules.dep")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed, "virtio_net")
	f.Add([]byte("a.ko: b.ko\nb.ko: a.ko\n"), "a")
	f.Fuzz(func(t *testing.T, data []byte, wanted string) {
		d, err := ParseDep(bytes.NewReader(data))
		if err != nil {
			return
		}
		got, err := d.Resolve([]string{wanted})
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, e := range got {
			if seen[e.Path] {
				t.Fatalf("%s listed twice", e.Path)
			}
			seen[e.Path] = true
		}
	})
}

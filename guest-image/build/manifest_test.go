package build

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/guest-image/build/rootimg"
)

func validManifest() *Manifest {
	h256, h384 := strings.Repeat("ab", 32), strings.Repeat("cd", 48)
	return &Manifest{
		Schema: Schema,
		Kernel: Artifact{Size: 10, SHA256: h256, SHA384: h384},
		Root: RootDisk{File: RootFile, FS: "erofs", Image: rootimg.Image{
			Size: 8192 + 4096, SHA256: h256, DataSize: 8192, RootHash: h256, Salt: h256}},
		Cmdline:      Cmdline,
		KernelBuild:  KernelBuild{SourcePackage: "linux-source-6.12", SourceVersion: "1", FragmentSHA256: h256},
		RuncVersion:  "1.4.3",
		Files:        []File{{Path: "/usr/bin/cloak-agent", Mode: "0755", Size: 1, SHA256: h256}},
		Measurements: Measurements{Emulated: h384},
		Debian: DebianFlavour{
			Kernel:        Artifact{Size: 10, SHA256: h256, SHA384: h384},
			Initrd:        Artifact{Size: 20, SHA256: h256, SHA384: h384},
			Cmdline:       Cmdline,
			KernelPackage: KernelPackage{Name: "linux-image-x", Version: "1", Release: "x", DebSHA256: h256},
			Modules:       []string{"failover.ko"},
			Measurements:  Measurements{Emulated: h384},
		},
	}
}

func TestParseManifest(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(m *Manifest)
		raw     string // used instead of the edited manifest when set
		wantErr string
	}{
		{"valid", func(*Manifest) {}, "", ""},
		{"schema", func(m *Manifest) { m.Schema = "cloak-image/v0" }, "", "schema"},
		{"short hash", func(m *Manifest) { m.Kernel.SHA384 = "abcd" }, "", "kernel sha384"},
		{"uppercase hash", func(m *Manifest) { m.Debian.Initrd.SHA256 = strings.Repeat("AB", 32) }, "", "debian.initrd sha256"},
		{"zero size", func(m *Manifest) { m.Debian.Initrd.Size = 0 }, "", "debian.initrd size"},
		{"root data size", func(m *Manifest) { m.Root.DataSize = 100 }, "", "root: data size"},
		{"root shorter than its data", func(m *Manifest) { m.Root.Size = m.Root.DataSize - 1 }, "", "root: data size"},
		{"root hash", func(m *Manifest) { m.Root.RootHash = "x" }, "", "root root_hash"},
		{"root file", func(m *Manifest) { m.Root.File = "../etc/shadow" }, "", "root: file"},
		{"debian snp value", func(m *Manifest) { m.Debian.Measurements.SNP = &SNPMeasurements{} }, "", "only the emulated value"},
		{"debian cmdline NUL", func(m *Manifest) { m.Debian.Cmdline = "a\x00b" }, "", "debian.cmdline"},
		{"measurement", func(m *Manifest) { m.Measurements.Emulated = "" }, "", "measurements.emulated"},
		{"cmdline NUL", func(m *Manifest) { m.Cmdline = "a\x00b" }, "", "cmdline"},
		{"cmdline long", func(m *Manifest) { m.Cmdline = strings.Repeat("a", 4096) }, "", "cmdline"},
		{"module path", func(m *Manifest) { m.Debian.Modules = []string{"../x.ko"} }, "", "module"},
		{"file path", func(m *Manifest) { m.Files[0].Path = "/usr/../init" }, "", "file path"},
		{"unknown field", nil, `{"schema":"cloak-image/v2","extra":1}`, "unknown field"},
		{"trailing data", nil, "", "trailing data"},
		{"not json", nil, "manifest", "parse manifest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest()
			if tt.edit != nil {
				tt.edit(m)
			}
			b, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.raw != "":
				b = []byte(tt.raw)
			case tt.name == "trailing data":
				b = append(b, []byte(" {}")...)
			}
			got, err := ParseManifest(b)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Cmdline != m.Cmdline || got.Files[0] != m.Files[0] {
				t.Fatalf("round trip changed the manifest: %+v", got)
			}
		})
	}
}

func TestReadManifestSizeLimit(t *testing.T) {
	dir := t.TempDir()
	big := make([]byte, maxManifestSize+10)
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(dir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v, want the size limit", err)
	}
}

// Manifests are published and checked by third parties: any bytes must
// either parse into a manifest that passes validation or be refused.
func FuzzParseManifest(f *testing.F) {
	valid, err := validManifest().marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(`{"schema":"cloak-image/v2"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		if err := m.validate(); err != nil {
			t.Fatalf("accepted manifest fails validation: %v", err)
		}
		again, err := m.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseManifest(again); err != nil {
			t.Fatalf("re-encoded manifest refused: %v", err)
		}
	})
}

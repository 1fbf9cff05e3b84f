package pull

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	goodDigest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	goodLayer  = `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + goodDigest + `","size":10}`
	goodConfig = `{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + goodDigest + `","size":10}`
)

func TestParseManifest(t *testing.T) {
	tests := []struct{ name, in, wantErr string }{
		{"oci", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + goodConfig + `,"layers":[` + goodLayer + `]}`, ""},
		{"encrypted layer", `{"schemaVersion":2,"config":` + goodConfig + `,"layers":[` + strings.Replace(goodLayer, "gzip", "gzip+encrypted", 1) + `]}`, ""},
		{"schema 1", `{"schemaVersion":1}`, "schemaVersion 1"},
		{"index", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}`, "not an image manifest"},
		{"no layers", `{"schemaVersion":2,"config":` + goodConfig + `,"layers":[]}`, "0 layers"},
		{"big config", `{"schemaVersion":2,"config":` + strings.Replace(goodConfig, `"size":10`, `"size":2000000`, 1) + `,"layers":[` + goodLayer + `]}`, "config: size 2000000"},
		{"bad digest", `{"schemaVersion":2,"config":` + goodConfig + `,"layers":[` + strings.Replace(goodLayer, "sha256:e3", "sha256:zz", 1) + `]}`, "layer 1: digest"},
		{"foreign layer", `{"schemaVersion":2,"config":` + goodConfig + `,"layers":[` + strings.Replace(goodLayer, `"size":10`, `"size":10,"urls":["http://x"]`, 1) + `]}`, "foreign"},
		{"unknown layer type", `{"schemaVersion":2,"config":` + goodConfig + `,"layers":[` + strings.Replace(goodLayer, "tar+gzip", "squashfs", 1) + `]}`, "not supported"},
		{"not json", `[`, "not an image manifest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseManifest([]byte(tc.in))
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	m, err := parseManifest([]byte(`{"schemaVersion":2,"config":` + goodConfig + `,"layers":[` + goodLayer + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	amd64 := &v1.Platform{OS: "linux", Architecture: "amd64"}
	tests := []struct{ name, in, wantErr string }{
		{"ok", `{"os":"linux","architecture":"amd64","config":{"Entrypoint":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["` + goodDigest + `"]}}`, ""},
		{"count", `{"rootfs":{"type":"layers","diff_ids":[]}}`, "0 diff_ids for 1 layers"},
		{"type", `{"rootfs":{"type":"squash","diff_ids":["` + goodDigest + `"]}}`, "rootfs type"},
		{"arch", `{"architecture":"arm64","rootfs":{"type":"layers","diff_ids":["` + goodDigest + `"]}}`, "want linux/amd64"},
		{"trailing", `{"rootfs":{"type":"layers","diff_ids":["` + goodDigest + `"]}}{}`, "trailing"},
		{"bad diff_id", `{"rootfs":{"type":"layers","diff_ids":["md5:abc"]}}`, "diff_id 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tc.in), m, amd64)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzParseManifestConfig(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"config":`+goodConfig+`,"layers":[`+goodLayer+`]}`),
		[]byte(`{"rootfs":{"type":"layers","diff_ids":["`+goodDigest+`"]}}`))
	f.Add([]byte(`{}`), []byte(`{}`))
	amd64 := &v1.Platform{OS: "linux", Architecture: "amd64"}
	f.Fuzz(func(t *testing.T, manifest, config []byte) {
		m, err := parseManifest(manifest)
		if err != nil {
			return
		}
		if len(m.Layers) == 0 || len(m.Layers) > maxLayers || m.Config.Size > maxConfigBytes {
			t.Fatalf("accepted manifest out of bounds: %d layers, config %d bytes", len(m.Layers), m.Config.Size)
		}
		for _, l := range m.Layers {
			if _, _, err := layerType(l.MediaType); err != nil || l.Digest.Validate() != nil {
				t.Fatalf("accepted unusable layer %+v", l)
			}
		}
		c, err := parseConfig(config, m, amd64)
		if err != nil {
			return
		}
		if len(c.RootFS.DiffIDs) != len(m.Layers) {
			t.Fatalf("accepted %d diff_ids for %d layers", len(c.RootFS.DiffIDs), len(m.Layers))
		}
	})
}

package task

import (
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

func TestKindOf(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		kind        taskKind
		pod         string
	}{
		{"ctr run", nil, standalone, "t1"},
		{"CRI sandbox", map[string]string{annotationContainerType: "sandbox", annotationSandboxID: "t1"}, podSandbox, "t1"},
		{"CRI container", map[string]string{annotationContainerType: "container", annotationSandboxID: "sb"}, podContainer, "sb"},
		{"container without sandbox id", map[string]string{annotationContainerType: "container"}, standalone, "t1"},
		{"unknown type", map[string]string{annotationContainerType: "other", annotationSandboxID: "sb"}, standalone, "t1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, pod := kindOf("t1", tt.annotations)
			if kind != tt.kind || pod != tt.pod {
				t.Errorf("kindOf = %v, %q; want %v, %q", kind, pod, tt.kind, tt.pod)
			}
			if g := groupID("t1", tt.annotations); g != tt.pod {
				t.Errorf("groupID = %q, want %q", g, tt.pod)
			}
		})
	}
}

func TestReadAnnotations(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"ociVersion":"1.2.0","annotations":{"io.kubernetes.cri.sandbox-id":"sb"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := readAnnotations(dir)
	if err != nil || a[annotationSandboxID] != "sb" {
		t.Fatalf("readAnnotations = %v, %v", a, err)
	}
	if _, err := readAnnotations(t.TempDir()); err == nil {
		t.Error("readAnnotations of a bundle without config.json succeeded")
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func gzipped(t *testing.T, s string) string {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

const testInitdata = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = \"package agent_policy\"\n"

func TestVMSettingsFor(t *testing.T) {
	allowAll := config.Config{VCPUs: 1, MemoryMiB: 512, TEE: config.TEENone,
		AllowedAnnotations: []string{"initdata", "vcpus", "memory"}}
	noneAllowed := config.Config{VCPUs: 1, MemoryMiB: 512, TEE: config.TEENone}
	tests := []struct {
		name        string
		cfg         config.Config
		annotations map[string]string
		vcpus, mem  int
		initdata    string
		wantErr     string
		errKind     error
	}{
		{name: "defaults", cfg: noneAllowed, vcpus: 1, mem: 512},
		{name: "image and foreign annotations pass", cfg: noneAllowed,
			annotations: map[string]string{AnnotationImage: "busybox", "io.kubernetes.cri.sandbox-name": "x"}, vcpus: 1, mem: 512},
		{name: "allowed sizes", cfg: allowAll,
			annotations: map[string]string{AnnotationVCPUs: "2", AnnotationMemory: "1024"}, vcpus: 2, mem: 1024},
		{name: "initdata", cfg: allowAll, annotations: map[string]string{AnnotationInitdata: b64(testInitdata)},
			vcpus: 1, mem: 512, initdata: testInitdata},
		{name: "gzip initdata", cfg: allowAll, annotations: map[string]string{AnnotationInitdata: gzipped(t, testInitdata)},
			vcpus: 1, mem: 512, initdata: testInitdata},
		{name: "not allowed", cfg: noneAllowed, annotations: map[string]string{AnnotationVCPUs: "2"},
			wantErr: `add "vcpus" to allowed_annotations`, errKind: errdefs.ErrPermissionDenied},
		{name: "unknown cloak annotation", cfg: allowAll, annotations: map[string]string{"io.cloak.kernel": "/x"},
			wantErr: "unknown to cloak", errKind: errdefs.ErrInvalidArgument},
		{name: "vcpus not a number", cfg: allowAll, annotations: map[string]string{AnnotationVCPUs: "two"}, wantErr: "1..256"},
		{name: "too many vcpus", cfg: allowAll, annotations: map[string]string{AnnotationVCPUs: "1000"}, wantErr: "1..256"},
		{name: "too little memory", cfg: allowAll, annotations: map[string]string{AnnotationMemory: "64"}, wantErr: "128..1048576"},
		{name: "initdata not base64", cfg: allowAll, annotations: map[string]string{AnnotationInitdata: "%%%"}, wantErr: "not base64"},
		{name: "initdata empty", cfg: allowAll, annotations: map[string]string{AnnotationInitdata: b64("  \n")}, wantErr: "empty initdata"},
		{name: "initdata too large", cfg: allowAll, annotations: map[string]string{AnnotationInitdata: b64(strings.Repeat("a", maxInitdataSize+1))}, wantErr: "larger than"},
		{name: "gzip bomb", cfg: allowAll, annotations: map[string]string{AnnotationInitdata: gzipped(t, strings.Repeat("a", maxInitdataSize+10))}, wantErr: "larger than"},
		{name: "broken gzip", cfg: allowAll, annotations: map[string]string{AnnotationInitdata: base64.StdEncoding.EncodeToString([]byte{0x1f, 0x8b, 1})}, wantErr: "bad gzip"},
		{name: "snp without initdata", cfg: config.Config{VCPUs: 1, MemoryMiB: 512, TEE: config.TEESNP}, wantErr: "no initdata, so no agent policy"},
		{name: "emulated initdata without policy", cfg: config.Config{VCPUs: 1, MemoryMiB: 512, TEE: config.TEEEmulated, AllowedAnnotations: []string{"initdata"}},
			annotations: map[string]string{AnnotationInitdata: b64("version = \"0.1.0\"\n[data]\n\"aa.toml\" = \"\"\n")},
			wantErr:     "`cloak generate pod.yaml", errKind: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vs, err := vmSettingsFor(tt.cfg, tt.annotations)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				if tt.errKind != nil && !errors.Is(err, tt.errKind) {
					t.Errorf("err %v is not %v", err, tt.errKind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if vs.vcpus != tt.vcpus || vs.memoryMiB != tt.mem || string(vs.initdata) != tt.initdata {
				t.Errorf("got vcpus %d memory %d initdata %q; want %d %d %q", vs.vcpus, vs.memoryMiB, vs.initdata, tt.vcpus, tt.mem, tt.initdata)
			}
			if vs.tee.Kind != qemu.TEENone {
				t.Errorf("tee %v, want none", vs.tee.Kind)
			}
		})
	}
}

// The handler's KBS settings become a CoCo initdata document the guest's
// attestation agent reads: aa.toml names the URL and the certificate.
func TestDefaultInitdataFromKBS(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	pem := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	if err := os.WriteFile(ca, []byte(pem), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{VCPUs: 1, MemoryMiB: 512, TEE: config.TEESNP, KBS: config.KBS{URL: "https://10.88.0.1:8080", CAFile: ca}}
	// A confidential pod needs a policy, which a document built from [kbs]
	// url never has: its pods must bring their own initdata.
	if _, err := vmSettingsFor(cfg, nil); err == nil || !strings.Contains(err.Error(), "has no agent policy") {
		t.Fatalf("snp pod with the handler's url-only initdata: err %v, want refused for its missing policy", err)
	}
	var vs vmSettings
	var err error
	if vs.initdata, err = defaultInitdata(cfg.KBS); err != nil {
		t.Fatal(err)
	}
	if vs.tee, err = teeFor(cfg, vs.initdata); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Version   string            `toml:"version"`
		Algorithm string            `toml:"algorithm"`
		Data      map[string]string `toml:"data"`
	}
	if err := toml.Unmarshal(vs.initdata, &doc); err != nil {
		t.Fatalf("initdata is not TOML: %v\n%s", err, vs.initdata)
	}
	var aa struct {
		TokenConfigs struct {
			KBS struct{ URL, Cert string } `toml:"kbs"`
		} `toml:"token_configs"`
	}
	if err := toml.Unmarshal([]byte(doc.Data["aa.toml"]), &aa); err != nil {
		t.Fatalf("aa.toml: %v\n%s", err, doc.Data["aa.toml"])
	}
	if doc.Version != "0.1.0" || aa.TokenConfigs.KBS.URL != cfg.KBS.URL || aa.TokenConfigs.KBS.Cert != pem {
		t.Errorf("initdata %+v, aa.toml %+v", doc, aa)
	}
	// SNP binds the document's digest (sha384, its algorithm) fitted to
	// HOST_DATA's 32 bytes.
	want := sha512.Sum384(vs.initdata)
	if vs.tee.Kind != qemu.TEESNP || !bytes.Equal(vs.tee.InitdataDigest, want[:32]) {
		t.Errorf("tee %+v, want snp with the initdata's sha384 fitted to 32 bytes", vs.tee)
	}

	cfg.TEE = config.TEETDX
	if vs.tee, err = teeFor(cfg, vs.initdata); err != nil {
		t.Fatal(err)
	}
	want384 := sha512.Sum384(vs.initdata)
	if vs.tee.Kind != qemu.TEETDX || !bytes.Equal(vs.tee.InitdataDigest, want384[:]) {
		t.Errorf("tee %+v, want tdx with sha384 of the initdata", vs.tee)
	}

	// A pod's own initdata replaces the handler's.
	cfg.AllowedAnnotations = []string{"initdata"}
	vs, err = vmSettingsFor(cfg, map[string]string{AnnotationInitdata: b64(testInitdata)})
	if err != nil || string(vs.initdata) != testInitdata {
		t.Errorf("pod initdata: %q, %v", vs.initdata, err)
	}

	// An initdata the KBS and the guest could not digest is refused now.
	cfg.AllowedAnnotations = []string{"initdata"}
	if _, err := vmSettingsFor(cfg, map[string]string{AnnotationInitdata: b64("algorithm = \"md5\"\n")}); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("initdata with an unknown algorithm: %v", err)
	}
	if _, err := vmSettingsFor(config.Config{KBS: config.KBS{URL: "https://k", CAFile: filepath.Join(dir, "missing.pem")}}, nil); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("missing CA file: %v", err)
	}
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte(`"""`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := vmSettingsFor(config.Config{KBS: config.KBS{URL: "https://k", CAFile: bad}}, nil); err == nil || !strings.Contains(err.Error(), "not a PEM") {
		t.Errorf("CA file with TOML quotes: %v", err)
	}
	file := filepath.Join(dir, "initdata.toml")
	if err := os.WriteFile(file, []byte(testInitdata), 0o600); err != nil {
		t.Fatal(err)
	}
	vs, err = vmSettingsFor(config.Config{KBS: config.KBS{InitdataFile: file}}, nil)
	if err != nil || string(vs.initdata) != testInitdata {
		t.Errorf("initdata_file: %q, %v", vs.initdata, err)
	}
}

// FuzzDecodeInitdata: the annotation comes from whoever creates pods.
func FuzzDecodeInitdata(f *testing.F) {
	f.Add(b64(testInitdata))
	f.Add(gzipped(&testing.T{}, testInitdata))
	f.Add("%%%")
	f.Fuzz(func(t *testing.T, v string) {
		raw, err := decodeInitdata(v)
		if err == nil && (len(raw) == 0 || len(raw) > maxInitdataSize) {
			t.Fatalf("accepted %d bytes", len(raw))
		}
	})
}

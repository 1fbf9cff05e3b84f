package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/kbs/imagecrypt"
)

// pushPlainImage serves a registry on loopback holding a two-layer image
// at HOST/demo/hello:plain and returns HOST.
func pushPlainImage(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, body := range []string{"hello", strings.Repeat("world ", 1000)} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, Size: int64(len(body))})
		io.WriteString(tw, body)
		tw.Close()
		l, err := tarball.LayerFromOpener(testutil.BytesOpener(buf.Bytes()), tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	r, err := name.ParseReference(host+"/demo/hello:plain", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return host
}

func TestImageEncryptCommand(t *testing.T) {
	host := pushPlainImage(t)
	kek := writeFile(t, strings.Repeat("k", 32))
	const kid = "kbs:///default/image-key/demo"

	// Text: progress on stderr, the pushed reference on stdout. No KBS
	// flags or environment are needed.
	out, errOut, code := run(t, nil, "", "image", "encrypt", "--insecure", "--key-id", kid, "--kek", kek,
		host+"/demo/hello:plain", host+"/demo/hello:encrypted")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	progress := regexp.MustCompile(`^layer [12]/2 sha256:[0-9a-f]{12} [0-9.]+ (B|KiB) encrypted in [0-9]+\.[0-9]{2} s$`)
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 2 || !progress.MatchString(lines[0]) || !progress.MatchString(lines[1]) || !strings.HasPrefix(lines[1], "layer 2/2 ") {
		t.Errorf("stderr:\n%s", errOut)
	}
	pushed := regexp.MustCompile(`^pushed ` + regexp.QuoteMeta(host) + `/demo/hello@sha256:[0-9a-f]{64}\n$`)
	if !pushed.MatchString(out) {
		t.Errorf("stdout %q", out)
	}
	r, _ := name.ParseReference(strings.TrimSpace(strings.TrimPrefix(out, "pushed ")))
	m, err := remote.Image(r)
	if err != nil {
		t.Fatalf("the printed reference does not resolve: %v", err)
	}
	if mf, _ := m.Manifest(); len(mf.Layers) != 2 || mf.Layers[0].MediaType != types.OCILayer+"+encrypted" ||
		mf.Layers[1].Annotations[imagecrypt.KeyAnnotation] == "" {
		t.Errorf("pushed manifest %+v", mf)
	}

	// JSON: exactly the documented fields.
	out, errOut, code = run(t, nil, "", "-o", "json", "image", "encrypt", "--key-id", kid, "--kek", kek, "--platform", "linux/amd64",
		host+"/demo/hello:plain", host+"/demo/hello:encrypted2")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out)
	}
	if keys := sortedKeys(doc); !slices.Equal(keys, []string{"image", "layers", "manifest_digest"}) {
		t.Errorf("JSON keys %v", keys)
	}
	var res struct {
		Image          string
		ManifestDigest string `json:"manifest_digest"`
		Layers         []map[string]json.RawMessage
	}
	json.Unmarshal([]byte(out), &res)
	if res.Image != host+"/demo/hello@"+res.ManifestDigest || !strings.HasPrefix(res.ManifestDigest, "sha256:") || len(res.Layers) != 2 {
		t.Errorf("JSON result %+v", res)
	}
	for _, l := range res.Layers {
		if keys := sortedKeys(l); !slices.Equal(keys, []string{"digest", "encrypted_digest", "encrypted_size", "size"}) {
			t.Errorf("layer JSON keys %v", keys)
		}
		var size, encSize int64
		json.Unmarshal(l["size"], &size)
		json.Unmarshal(l["encrypted_size"], &encSize)
		if size <= 0 || encSize != size { // AES-CTR keeps the length
			t.Errorf("layer sizes %d -> %d", size, encSize)
		}
	}
	if d, err := v1.NewHash(res.ManifestDigest); err != nil {
		t.Error(err)
	} else if got, _ := m.Digest(); got == d {
		t.Error("two encryptions gave the same manifest: layer keys are not fresh")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestImageEncryptErrors(t *testing.T) {
	host := pushPlainImage(t)
	kek := writeFile(t, strings.Repeat("k", 32))
	shortKEK := writeFile(t, "short")
	const kid = "kbs:///default/image-key/demo"
	src, dst := host+"/demo/hello:plain", host+"/demo/hello:enc"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no arguments", []string{"image", "encrypt", "--key-id", kid, "--kek", kek}, exitUsage, "accepts 2 arg(s), received 0"},
		{"one argument", []string{"image", "encrypt", "--key-id", kid, "--kek", kek, src}, exitUsage, "accepts 2 arg(s), received 1"},
		{"no key id", []string{"image", "encrypt", "--kek", kek, src, dst}, exitUsage, "--key-id is required"},
		{"bad key id", []string{"image", "encrypt", "--key-id", "kbs:///default/image-key", "--kek", kek, src, dst}, exitUsage, "three segments"},
		{"key id without scheme", []string{"image", "encrypt", "--key-id", "default/image-key/demo", "--kek", kek, src, dst}, exitUsage, "want kbs:///"},
		{"no KEK", []string{"image", "encrypt", "--key-id", kid, src, dst}, exitUsage, "--kek FILE is required"},
		{"bad platform", []string{"image", "encrypt", "--key-id", kid, "--kek", kek, "--platform", "amd64", src, dst}, exitUsage, `--platform "amd64"`},
		{"bad reference", []string{"image", "encrypt", "--key-id", kid, "--kek", kek, "Not A Ref", dst}, exitUsage, `SRC "Not A Ref"`},
		{"unknown group command", []string{"image", "decrypt"}, exitUsage, `unknown command "decrypt" for "kbsctl image"`},
		{"short KEK", []string{"image", "encrypt", "--key-id", kid, "--kek", shortKEK, src, dst}, exitFailure, "want exactly 32 raw bytes"},
		{"missing source", []string{"image", "encrypt", "--key-id", kid, "--kek", kek, host + "/demo/nothere:1", dst}, exitFailure,
			"source image " + host + "/demo/nothere:1"},
		{"registry down", []string{"image", "encrypt", "--key-id", kid, "--kek", kek, dead + "/demo/hello:plain", dst}, exitFailure,
			"is the registry running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, nil, "", tc.args...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit %d and %q", code, errOut, tc.wantCode, tc.wantErr)
			}
			if strings.Contains(errOut, "KBS unreachable") || strings.Contains(errOut, "--url") || strings.Contains(errOut, "--timeout") {
				t.Errorf("a registry-only command blamed the KBS:\n%s", errOut)
			}
			if out != "" {
				t.Errorf("a failed command wrote to stdout: %q", out)
			}
		})
	}
}

func TestImageEncryptHelp(t *testing.T) {
	out, _, code := run(t, nil, "", "image", "encrypt", "--help")
	for _, want := range []string{
		"kbsctl resource set default/image-key/demo --file image.kek", // the KEK must reach the KBS
		"plaintext image stays wherever SRC is",
		"--key-id", "--kek", "--insecure", "--platform", `(default "linux/amd64")`,
	} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("help lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	if out, _, code := run(t, nil, "", "image"); code != exitOK || !strings.Contains(out, "encrypt") {
		t.Errorf("bare image group: exit %d\n%s", code, out)
	}
}

package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"sigs.k8s.io/yaml"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/internal/version"
)

// run runs cloak with args and stdin; it returns the exit code and streams.
func run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := newApp(strings.NewReader(stdin), &out, &errOut).execute(context.Background(), args)
	return code, out.String(), errOut.String()
}

// pushImage serves one image on loopback and returns its reference and
// manifest digest.
func pushImage(t *testing.T) (string, string) {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: []string{"/hello"}, User: "1000"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/demo/hello:1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref, d.String()
}

func podYAML(image string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  containers:\n  - name: app\n    image: " + image + "\n"
}

func TestGenerateJSON(t *testing.T) {
	ref, digest := pushImage(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.yaml")
	code, stdout, stderr := run(t, podYAML(ref), "generate", "--kbs-url", "https://10.0.2.2:8080", "-o", "json", "-w", out, "--crictl", dir, "-")
	if code != exitOK {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	var sum struct {
		Pods []summaryPod `json:"pods"`
	}
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if len(sum.Pods) != 1 || sum.Pods[0].Images[0].Digest != digest || sum.Pods[0].RuntimeClass != "cloak-emulated" {
		t.Fatalf("summary %+v", sum)
	}
	// The digest printed is the digest of the initdata in the annotation.
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var pod struct {
		Metadata struct{ Annotations map[string]string }
		Spec     struct{ RuntimeClassName string }
	}
	if err := yaml.Unmarshal(b, &pod); err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(pod.Metadata.Annotations["io.cloak.initdata"])
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := io.ReadAll(zr)
	_, d, err := kbstypes.InitdataDigest(doc)
	if err != nil || hex.EncodeToString(d) != sum.Pods[0].InitdataHex || pod.Spec.RuntimeClassName != "cloak-emulated" {
		t.Errorf("digest %x (%v), summary %s, runtime class %q", d, err, sum.Pods[0].InitdataHex, pod.Spec.RuntimeClassName)
	}
	for _, f := range []string{"pod.json", "container-app.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestGenerateText(t *testing.T) {
	ref, digest := pushImage(t)
	file := filepath.Join(t.TempDir(), "pod.yaml")
	os.WriteFile(file, []byte(podYAML(ref)), 0o644)
	code, stdout, stderr := run(t, "", "generate", "--kbs-url", "https://10.0.2.2:8080", "--runtime-class", "cloak-snp", "--allow-exec", file)
	if code != exitOK || !strings.Contains(stdout, "runtimeClassName: cloak-snp") || !strings.Contains(stdout, "io.cloak.initdata:") {
		t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"initdata sha384 ", digest, "kbsctl reference-value set init_data", "--allow-exec"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

func TestGenerateErrors(t *testing.T) {
	priv := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: x\n    securityContext:\n      privileged: true\n"
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"no kbs url", "", []string{"generate"}, exitUsage, "--kbs-url is required"},
		{"bad flag", "", []string{"generate", "--nope"}, exitUsage, "unknown flag"},
		{"bad mirror", "", []string{"generate", "--kbs-url", "https://k", "--mirror", "x"}, exitUsage, "HOST=ENDPOINT"},
		{"missing file", "", []string{"generate", "--kbs-url", "https://k", "/nonexistent.yaml"}, exitUsage, "no such file"},
		{"refused", priv, []string{"generate", "--kbs-url", "https://k"}, exitFailure, "securityContext.privileged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
	// With -o json: one object on stdout, {"error", "hint"}, nothing on
	// stderr, the same exit code; also for a mistake cobra finds before
	// generate's PreRunE could read -o.
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string // in the error
		hint  string // "": any hint
	}{
		{"refused", priv, []string{"generate", "--kbs-url", "https://k", "-o", "json"}, exitFailure, "privileged", ""},
		{"unknown flag", "", []string{"generate", "-o", "json", "--bogus"}, exitUsage, "--bogus", "run 'cloak generate --help' for usage"},
		{"no --kbs-url", "", []string{"generate", "-o", "json"}, exitUsage, "--kbs-url is required", "run 'cloak generate --help' for usage"},
	} {
		t.Run("json "+tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.stdin, tc.args...)
			obj := testutil.OneJSONObject(t, stdout)
			msg, _ := obj["error"].(string)
			hint, _ := obj["hint"].(string)
			if code != tc.code || stderr != "" || !strings.Contains(msg, tc.want) || hint == "" || tc.hint != "" && hint != tc.hint {
				t.Errorf("exit %d (want %d), stdout %s, stderr %q", code, tc.code, stdout, stderr)
			}
		})
	}
}

// TestCommandLine: an unknown flag names itself and the usage (exit 2);
// --version prints the stamped version (exit 0).
func TestCommandLine(t *testing.T) {
	code, stdout, stderr := run(t, "", "--bogus")
	if code != exitUsage || stdout != "" || stderr != "cloak: unknown flag: --bogus\n  run 'cloak generate --help' for usage\n" {
		t.Errorf("--bogus: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = run(t, "", "--version")
	if code != exitOK || stdout != "cloak version "+version.String()+"\n" || stderr != "" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

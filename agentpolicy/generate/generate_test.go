package generate

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/pelletier/go-toml/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/yaml"

	"github.com/cloak-containers/cloak/agentpolicy"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// testRegistry is go-containerregistry's registry on loopback holding the
// images the testdata names; digests maps each manifest digest to the
// placeholder the golden files use.
type testRegistry struct {
	host    string
	digests map[string]string
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(nilLogger())))
	t.Cleanup(srv.Close)
	r := &testRegistry{host: strings.TrimPrefix(srv.URL, "http://"), digests: map[string]string{}}
	app := r.image(t, "amd64", v1.Config{
		Entrypoint: []string{"/bin/app"}, Cmd: []string{"--serve"},
		Env:        []string{"PATH=/usr/bin:/bin", "MODE=prod", "LANG=C.UTF-8"},
		WorkingDir: "/srv", User: "1000",
	})
	r.push(t, "app:1", app, "APP")
	r.push(t, "named:1", r.image(t, "amd64", v1.Config{Cmd: []string{"nginx"}, User: "nginx"}), "NAMED")
	r.push(t, "grouped:1", r.image(t, "amd64", v1.Config{Cmd: []string{"run"}, User: "1000:1000"}), "GROUPED")
	// tools:1 is an index: the pinned digest is its linux/amd64 manifest's.
	amd := r.image(t, "amd64", v1.Config{Entrypoint: []string{"/bin/busybox"}, Cmd: []string{"sh"}})
	arm := r.image(t, "arm64", v1.Config{Entrypoint: []string{"/bin/busybox"}, Cmd: []string{"sh"}})
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	ref, _ := name.ParseReference(r.host + "/tools:1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := amd.Digest()
	r.digests[d.String()] = "TOOLS_AMD64"
	d, _ = idx.Digest()
	r.digests[d.String()] = "TOOLS_INDEX"
	return r
}

// image is a small image whose bytes depend only on its arguments.
func (r *testRegistry) image(t testing.TB, arch string, cfg v1.Config) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer([]byte("cloak generate test layer "+arch), types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, cfg
	cf.Created = v1.Time{Time: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func (r *testRegistry) push(t testing.TB, repoTag string, img v1.Image, placeholder string) {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	r.digests[d.String()] = placeholder
}

// neutral replaces what differs between runs (the registry's port, the
// digests) with placeholders.
func (r *testRegistry) neutral(s string) string {
	s = strings.ReplaceAll(s, r.host, "REGISTRY")
	for d, p := range r.digests {
		s = strings.ReplaceAll(s, d, "sha256:"+p)
	}
	return s
}

func (r *testRegistry) resolver(t testing.TB) Resolver {
	t.Helper()
	res, err := NewRegistryResolver(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func testOptions(res Resolver) Options {
	return Options{KBSURL: "https://10.0.2.2:8080", KBSCert: []byte(testCert), Resolver: res}
}

// testCert is a certificate-shaped PEM block (its bytes are not checked).
const testCert = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUY2xvYWstZ2VuZXJhdGUtdGVzdDAKBggqhkjOPQQDAjAA\n-----END CERTIFICATE-----\n"

var annotationRE = regexp.MustCompile(`(io\.cloak\.initdata: )\S+`)

func TestGolden(t *testing.T) {
	reg := newTestRegistry(t)
	for _, tc := range []struct {
		name string
		opts func(*Options)
	}{
		{"pod", nil},
		{"deployment", func(o *Options) { o.Namespace = "prod" }},
		{"allow-exec", func(o *Options) { o.AllowExec = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", tc.name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			opts := testOptions(reg.resolver(t))
			if tc.opts != nil {
				tc.opts(&opts)
			}
			res, err := Generate(context.Background(), []byte(strings.ReplaceAll(string(in), "REGISTRY", reg.host)), opts)
			if err != nil {
				t.Fatal(err)
			}
			var data []agentpolicy.Data
			for _, p := range res.Pods {
				checkInitdata(t, p)
				data = append(data, p.Data)
			}
			js, _ := json.MarshalIndent(data, "", "  ")
			golden(t, tc.name+".policy.json", reg.neutral(string(js)+"\n"))
			golden(t, tc.name+".golden.yaml", annotationRE.ReplaceAllString(reg.neutral(string(res.YAML)), "${1}INITDATA"))
		})
	}
}

// checkInitdata checks that the annotation decodes (as the shim decodes it)
// to the initdata, and that a TOML parser gives back the policy module and
// aa.toml byte for byte.
func checkInitdata(t *testing.T, p Pod) {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(p.Annotation)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc, p.Initdata) {
		t.Fatal("annotation does not decode to the initdata")
	}
	if len(doc) > 256<<10 {
		t.Fatalf("initdata %d bytes, over the shim's 256 KiB", len(doc))
	}
	var parsed struct {
		Version   string            `toml:"version"`
		Algorithm string            `toml:"algorithm"`
		Data      map[string]string `toml:"data"`
	}
	if err := toml.Unmarshal(doc, &parsed); err != nil {
		t.Fatalf("initdata is not TOML: %v\n%s", err, doc)
	}
	module, err := agentpolicy.Module(p.Data)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Version != "0.1.0" || parsed.Algorithm != "sha384" {
		t.Errorf("version %q algorithm %q", parsed.Version, parsed.Algorithm)
	}
	if parsed.Data["policy.rego"] != string(module) {
		t.Errorf("policy.rego does not round-trip:\n%q\nwant\n%q", parsed.Data["policy.rego"], module)
	}
	wantAA := "[token_configs.kbs]\nurl = \"https://10.0.2.2:8080\"\ncert = \"\"\"\n" + testCert + "\"\"\"\n"
	if parsed.Data["aa.toml"] != wantAA {
		t.Errorf("aa.toml = %q, want %q", parsed.Data["aa.toml"], wantAA)
	}
}

func golden(t *testing.T, file, got string) {
	t.Helper()
	path := filepath.Join("testdata", file)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it); got:\n%s", path, got)
	}
}

func TestTOMLStrings(t *testing.T) {
	for _, s := range []string{
		"plain\n", "", "no newline", "'''", "ends in '", "'' two", "tab\tand\r\nCRLF", "ctl \x01 \x7f",
		`back\slash "quotes" """`, "unicode ü ☃ \u2028", "\n\nleading newlines",
	} {
		doc := "s = " + tomlMultiline(s) + "\nb = " + tomlBasic(s) + "\n"
		var v struct{ S, B string }
		if err := toml.Unmarshal([]byte(doc), &v); err != nil {
			t.Errorf("%q: %v\n%s", s, err, doc)
			continue
		}
		if v.S != s || v.B != s {
			t.Errorf("%q round-trips as %q (multi-line) and %q (basic)", s, v.S, v.B)
		}
	}
}

func TestRefusals(t *testing.T) {
	reg := newTestRegistry(t)
	pod := func(spec string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n" + spec
	}
	ctr := "  containers:\n  - name: c\n    image: REGISTRY/app:1\n"
	for _, tc := range []struct {
		name, yaml string
		field      string // the Error's Field
		want       string // in the message
	}{
		{"privileged", pod(ctr + "    securityContext:\n      privileged: true\n"), "spec.containers[0].securityContext.privileged", "privileged"},
		{"hostNetwork", pod("  hostNetwork: true\n" + ctr), "spec.hostNetwork", "host's namespaces"},
		{"hostPID", pod("  hostPID: true\n" + ctr), "spec.hostPID", "host's namespaces"},
		{"hostPath", pod(ctr + "  volumes:\n  - name: h\n    hostPath:\n      path: /etc\n"), "spec.volumes[0]", `volume "h"`},
		{"pvc", pod(ctr + "  volumes:\n  - name: d\n    persistentVolumeClaim:\n      claimName: data\n"), "spec.volumes[0]", `volume "d"`},
		{"secretKeyRef", pod(ctr + "    env:\n    - name: TOKEN\n      valueFrom:\n        secretKeyRef:\n          name: s\n          key: k\n"), "spec.containers[0].env[0].valueFrom", "TOKEN"},
		{"envFrom", pod(ctr + "    envFrom:\n    - configMapRef:\n        name: cm\n"), "spec.containers[0].envFrom", "envFrom"},
		{"procMount", pod(ctr + "    securityContext:\n      procMount: Unmasked\n"), "spec.containers[0].securityContext.procMount", "unmasked"},
		{"volumeDevices", pod(ctr + "    volumeDevices:\n    - name: d\n      devicePath: /dev/xvda\n"), "spec.containers[0].volumeDevices", "block devices"},
		{"addAll", pod(ctr + "    securityContext:\n      capabilities:\n        add: [ALL]\n"), "spec.containers[0].securityContext.capabilities.add[0]", "add ALL"},
		{"capPrefix", pod(ctr + "    securityContext:\n      capabilities:\n        add: [CAP_NET_ADMIN]\n"), "spec.containers[0].securityContext.capabilities.add[0]", "without CAP_"},
		{"namedUser", pod("  containers:\n  - name: c\n    image: REGISTRY/named:1\n"), "spec.containers[0].securityContext.runAsUser", `user "nginx"`},
		{"nonRoot", pod("  securityContext:\n    runAsNonRoot: true\n  containers:\n  - name: c\n    image: REGISTRY/tools:1\n"), "spec.containers[0].securityContext.runAsNonRoot", "uid 0"},
		{"unknownRegistry", pod("  containers:\n  - name: c\n    image: 127.0.0.1:1/nowhere:1\n"), "spec.containers[0].image", `resolve image "127.0.0.1:1/nowhere:1"`},
		{"unknownImage", pod("  containers:\n  - name: c\n    image: REGISTRY/missing:1\n"), "spec.containers[0].image", "NAME_UNKNOWN"},
		{"unknownField", pod(ctr + "    comand: [x]\n"), "", `unknown field "comand"`},
		{"deploymentHostPath", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector: {}\n  template:\n    spec:\n      containers:\n      - name: c\n        image: REGISTRY/app:1\n      volumes:\n      - name: h\n        hostPath:\n          path: /\n", "spec.template.spec.volumes[0]", `volume "h"`},
		{"list", "apiVersion: v1\nkind: List\nitems: []\n", "", "List"},
		{"restAPI", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    " + AnnotationRestAPI + ": everything\nspec:\n" + ctr, "metadata.annotations." + AnnotationRestAPI, `"everything" is not a part`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Generate(context.Background(), []byte(strings.ReplaceAll(tc.yaml, "REGISTRY", reg.host)), testOptions(reg.resolver(t)))
			var ge *Error
			if !errors.As(err, &ge) {
				t.Fatalf("err = %v, want an *Error", err)
			}
			if ge.Field != tc.field || !strings.Contains(err.Error(), tc.want) || ge.Hint == "" {
				t.Errorf("err = %q (field %q, hint %q), want field %q and %q in it", err, ge.Field, ge.Hint, tc.field, tc.want)
			}
		})
	}
}

// TestRestAPIAnnotation: the pod's annotation sets the policy's
// guest_components_rest_api; without it the policy keeps CoCo's default.
func TestRestAPIAnnotation(t *testing.T) {
	reg := newTestRegistry(t)
	for annotation, want := range map[string]string{"": "", "    " + AnnotationRestAPI + ": all\n": agentpolicy.RestAPIAll, "    " + AnnotationRestAPI + ": none\n": agentpolicy.RestAPINone} {
		in := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    team: a\n" + annotation + "spec:\n  containers:\n  - name: c\n    image: " + reg.host + "/app:1\n"
		res, err := Generate(context.Background(), []byte(in), testOptions(reg.resolver(t)))
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Pods[0].Data.GuestComponentsRestAPI; got != want {
			t.Errorf("annotation %q: guest_components_rest_api %q, want %q", annotation, got, want)
		}
	}
}

func TestImageGroupWarning(t *testing.T) {
	reg := newTestRegistry(t)
	in := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: " + reg.host + "/grouped:1\n"
	res, err := Generate(context.Background(), []byte(in), testOptions(reg.resolver(t)))
	if err != nil {
		t.Fatal(err)
	}
	c := res.Pods[0].Data.Containers[0]
	if c.UID != 1000 || c.GID != 0 || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "runAsGroup: 1000") {
		t.Errorf("uid %d gid %d warnings %q", c.UID, c.GID, res.Warnings)
	}
}

func TestMirror(t *testing.T) {
	reg := newTestRegistry(t)
	// The pod names a registry that does not exist; the mirror serves it.
	res, err := NewRegistryResolver([]string{"registry.invalid=http://" + reg.host}, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := res.Resolve(context.Background(), "registry.invalid/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if reg.digests[img.Digest] != "APP" || img.User != "1000" {
		t.Errorf("resolved %+v", img)
	}
	for _, bad := range []string{"noequals", "h=ftp://x", "h=http://x/path"} {
		if _, err := NewRegistryResolver([]string{bad}, nil); err == nil {
			t.Errorf("mirror %q accepted", bad)
		}
	}
}

func TestCrictl(t *testing.T) {
	reg := newTestRegistry(t)
	in, err := os.ReadFile("testdata/pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Generate(context.Background(), []byte(strings.ReplaceAll(string(in), "REGISTRY", reg.host)), testOptions(reg.resolver(t)))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WriteCrictl(dir, res.Pods[0]); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"pod.json", "container-init.json", "container-app.json", "container-shell.json"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(reg.neutral(string(b)), dir, "DIR")
		s = annotationJSONRE.ReplaceAllString(s, `${1}"INITDATA"`)
		golden(t, "crictl/"+f, s)
	}
	// crictl reads them with sigs.k8s.io/yaml into the CRI types.
	b, _ := os.ReadFile(filepath.Join(dir, "container-app.json"))
	var cfg runtimeapi.ContainerConfig
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if string(cfg.Envs[2].Value) != "http://localhost:8080/" || cfg.Linux.SecurityContext.RunAsUser.Value != 1000 {
		t.Errorf("container-app.json reads back as %v", &cfg)
	}
}

var annotationJSONRE = regexp.MustCompile(`("io\.cloak\.initdata": )"[^"]*"`)

// fakeResolver answers every reference with one image, without a registry.
type fakeResolver struct{}

func (fakeResolver) Resolve(_ context.Context, ref string) (Image, error) {
	if strings.Contains(ref, "missing") {
		return Image{}, errors.New("manifest unknown")
	}
	return Image{Digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Entrypoint: []string{"/app"}, Env: []string{"A=1"}, User: "10"}, nil
}

func FuzzGenerate(f *testing.F) {
	for _, file := range []string{"pod.yaml", "deployment.yaml", "allow-exec.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {containers: [{name: c, image: i, args: ['$(', '$$(A)', '$(A)']}]}\n"))
	opts := Options{KBSURL: "https://kbs:8080", Resolver: fakeResolver{}}
	f.Fuzz(func(t *testing.T, in []byte) {
		slow := time.AfterFunc(5*time.Second, func() { panic("Generate took over 5 s") })
		res, err := Generate(context.Background(), in, opts)
		slow.Stop()
		if err != nil {
			var ge *Error
			if errors.As(err, &ge) && ge.Hint == "" {
				t.Errorf("error without a hint: %v", err)
			}
			return
		}
		for _, p := range res.Pods {
			var parsed struct {
				Data map[string]string `toml:"data"`
			}
			if err := toml.Unmarshal(p.Initdata, &parsed); err != nil {
				t.Fatalf("initdata is not TOML: %v", err)
			}
			module, _ := agentpolicy.Module(p.Data)
			if parsed.Data["policy.rego"] != string(module) {
				t.Fatal("policy.rego does not round-trip")
			}
		}
	})
}

func TestInputTooLarge(t *testing.T) {
	_, err := Generate(context.Background(), make([]byte, MaxInputSize+1), Options{KBSURL: "https://k", Resolver: fakeResolver{}})
	var ge *Error
	if !errors.As(err, &ge) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v", err)
	}
}

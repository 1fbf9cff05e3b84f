package pull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cloak-containers/cloak/api/agentapi"
)

func insecure(host string) *agentapi.RegistryOptions {
	return &agentapi.RegistryOptions{InsecureRegistries: []string{host}}
}

// busybox is a busybox-like layer: a binary, applet symlinks, a hardlink,
// a set-uid file and files owned by another user.
func busybox(t testing.TB) mutate.Addendum {
	return gzLayer(t,
		dir("bin/"),
		file("bin/busybox", "#!busybox", 0o755),
		symlink("bin/sh", "busybox"),
		symlink("bin/abs", "/bin/busybox"),
		hardlink("bin/echo", "bin/busybox"),
		file("bin/su", "su", 0o4755),
		entry{name: "home/user/.profile", body: "x", typ: '0', mode: 0o600, uid: 1000},
		file("etc/a", "a", 0o644),
		file("etc/b", "b", 0o644),
		dir("d/"),
		file("d/x", "x", 0o644),
		file("d/sub/y", "y", 0o644),
	)
}

// whiteouts removes etc/a and replaces d's content with d/z.
func whiteouts(t testing.TB) mutate.Addendum {
	return gzLayer(t,
		file("etc/.wh.a", "", 0o644),
		file("d/z", "z", 0o644),
		file("d/.wh..wh..opq", "", 0o644),
	)
}

func TestPull(t *testing.T) {
	host := startRegistry(t, nil)
	ref := host + "/busybox:1"
	want := push(t, ref, busybox(t), whiteouts(t))
	store := t.TempDir()

	img, err := Pull(context.Background(), ref, Options{Registry: insecure(host), StoreDir: store})
	if err != nil {
		t.Fatal(err)
	}
	if img.Response.ManifestDigest != want.String() || img.Response.Image != ref || len(img.Response.LayerDigests) != 2 || img.Response.Encrypted {
		t.Errorf("response = %+v, want manifest %s, 2 plain layers", img.Response, want)
	}
	if img.Rootfs != filepath.Join(store, "images", "sha256-"+want.Hex, "rootfs") {
		t.Errorf("rootfs = %s", img.Rootfs)
	}
	if len(img.Config.Entrypoint) != 1 || img.Config.Entrypoint[0] != "/bin/sh" {
		t.Errorf("config = %+v, want entrypoint /bin/sh", img.Config)
	}
	if img.Response.UnpackedBytes != int64(len("#!busybox")+len("su")+5+1) /* + d/z */ {
		t.Errorf("unpacked bytes = %d", img.Response.UnpackedBytes)
	}
	checkTree(t, img.Rootfs, map[string]string{
		"bin/busybox":        "file 0755 0 #!busybox",
		"bin/sh":             "link busybox",
		"bin/abs":            "link /bin/busybox",
		"bin/echo":           "file 0755 0 #!busybox",
		"bin/su":             "file 4755 0 su",
		"home/user/.profile": "file 0600 1000 x",
		"etc/b":              "file 0644 0 b",
		"d/z":                "file 0644 0 z",
	}, []string{"etc/a", "d/x", "d/sub", "etc/.wh.a", "d/.wh..wh..opq"})
	var a, b syscall.Stat_t
	if syscall.Stat(filepath.Join(img.Rootfs, "bin/echo"), &a) != nil || syscall.Stat(filepath.Join(img.Rootfs, "bin/busybox"), &b) != nil || a.Ino != b.Ino {
		t.Errorf("bin/echo is not a hardlink of bin/busybox")
	}

	// The second pull reuses the unpacked rootfs.
	again, err := Pull(context.Background(), ref, Options{Registry: insecure(host), StoreDir: store})
	if err != nil {
		t.Fatal(err)
	}
	if again.Rootfs != img.Rootfs || again.Response.FetchNs != 0 || again.Response.UnpackNs != 0 ||
		again.Response.ManifestDigest != want.String() || again.Config.Entrypoint[0] != "/bin/sh" {
		t.Errorf("second pull = %+v, want reuse of %s", again.Response, img.Rootfs)
	}
	// And by digest.
	if _, err := Pull(context.Background(), host+"/busybox@"+want.String(), Options{Registry: insecure(host), StoreDir: store}); err != nil {
		t.Errorf("pull by digest: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(img.Rootfs))
	for _, e := range entries {
		if strings.Contains(e.Name(), "partial") {
			t.Errorf("partial rootfs %s left behind", e.Name())
		}
	}
}

// checkTree compares files ("file MODE UID BODY" or "link TARGET") and
// checks that gone paths do not exist.
func checkTree(t *testing.T, root string, want map[string]string, gone []string) {
	t.Helper()
	for p, w := range want {
		full := filepath.Join(root, p)
		fi, err := os.Lstat(full)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		var got string
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(full)
			got = "link " + target
		} else {
			body, _ := os.ReadFile(full)
			st := fi.Sys().(*syscall.Stat_t)
			got = fmt.Sprintf("file %04o %d %s", st.Mode&0o7777, st.Uid, body)
		}
		if got != w {
			t.Errorf("%s = %q, want %q", p, got, w)
		}
	}
	for _, p := range gone {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s exists, want it gone", p)
		}
	}
}

func TestPullRefusals(t *testing.T) {
	host := startRegistry(t, nil)
	push(t, host+"/escape:1", gzLayer(t, file("../evil", "x", 0o644)))
	push(t, host+"/ok:1", busybox(t))
	push(t, host+"/device:1", gzLayer(t, entry{name: "dev/sda", typ: '4', mode: 0o600}))
	push(t, host+"/armonly:1", gzLayer(t, file("a", "a", 0o644)))

	tests := []struct {
		name, ref  string
		opts       Options
		wantReason string
		wantMsg    string
	}{
		{"dotdot escape", host + "/escape:1", Options{Registry: insecure(host)}, agentapi.ReasonImagePull, `entry "../evil" escapes the rootfs`},
		{"device node", host + "/device:1", Options{Registry: insecure(host)}, agentapi.ReasonImagePull, "device nodes"},
		{"plain HTTP not insecure", host + "/ok:1", Options{}, agentapi.ReasonImagePull, "plain HTTP is allowed only to registries listed as insecure"},
		{"wrong platform", host + "/armonly:1", Options{Registry: insecure(host), Platform: "linux/arm64"}, agentapi.ReasonImagePull, "image is for linux/amd64, want linux/arm64"},
		{"file limit", host + "/ok:1", Options{Registry: insecure(host), MaxFiles: 3}, agentapi.ReasonImagePull, "more than 3 entries"},
		{"byte limit", host + "/ok:1", Options{Registry: insecure(host), MaxUnpackedBytes: 4}, agentapi.ReasonImagePull, "more than 4 bytes"},
		{"unknown image", host + "/nope:1", Options{Registry: insecure(host)}, agentapi.ReasonImagePull, "UNKNOWN"},
		{"bad reference", "UPPER/case:1", Options{}, agentapi.ReasonInvalidRequest, "reference"},
		{"bad mirror", host + "/ok:1", Options{Registry: &agentapi.RegistryOptions{Mirrors: map[string]string{host: "ftp://x"}}}, agentapi.ReasonInvalidRequest, "want an http:// or https:// URL"},
		{"bad platform", host + "/ok:1", Options{Platform: "linux/amd64/v2/x"}, agentapi.ReasonInvalidRequest, "platform"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.StoreDir = t.TempDir()
			_, err := Pull(context.Background(), tc.ref, tc.opts)
			var pe *Error
			if !errors.As(err, &pe) || pe.Reason != tc.wantReason || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error = %v, want %s containing %q", err, tc.wantReason, tc.wantMsg)
			}
			// Nothing half-unpacked stays in the store.
			if matches, _ := filepath.Glob(filepath.Join(tc.opts.StoreDir, "images", "*", "rootfs*")); len(matches) > 0 {
				t.Errorf("left in store: %v", matches)
			}
		})
	}
}

// TestPullTampered serves a layer blob whose bytes differ from its digest.
func TestPullTampered(t *testing.T) {
	var layerDigest atomic.Value
	layerDigest.Store("")
	host := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d := layerDigest.Load().(string)
			if r.Method != http.MethodGet || d == "" || !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			body[len(body)/2] ^= 0xff
			w.WriteHeader(rec.Code)
			w.Write(body)
		})
	})
	l := gzLayer(t, file("a", strings.Repeat("a", 1000), 0o644))
	push(t, host+"/tampered:1", l)
	d, _ := l.Layer.Digest()
	layerDigest.Store(d.String())

	_, err := Pull(context.Background(), host+"/tampered:1", Options{Registry: insecure(host), StoreDir: t.TempDir()})
	var pe *Error
	if !errors.As(err, &pe) || pe.Reason != agentapi.ReasonImagePull || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("error = %v, want IMAGE_PULL_FAILED naming %s", err, d)
	}
}

// TestPullDiffIDMismatch stores a config whose diff_id does not describe
// the layer: the blob digest passes, the content check must not.
func TestPullDiffIDMismatch(t *testing.T) {
	host := startRegistry(t, nil)
	tarball := tarOf(t, file("a", "a", 0o644))
	push(t, host+"/diff:1", mutate.Addendum{Layer: &blobLayer{blob: gzipOf(t, tarball), diffID: sha([]byte("other")), mt: types.OCILayer}})
	_, err := Pull(context.Background(), host+"/diff:1", Options{Registry: insecure(host), StoreDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "does not match diff_id") {
		t.Fatalf("error = %v, want diff_id mismatch", err)
	}
}

// TestPullMirror: the reference names a registry the guest must not
// contact; the mirror maps it to the real endpoint.
func TestPullMirror(t *testing.T) {
	host := startRegistry(t, nil)
	var hits atomic.Int32
	decoy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "decoy", http.StatusInternalServerError)
	}))
	t.Cleanup(decoy.Close)
	decoyHost := strings.TrimPrefix(decoy.URL, "http://")
	push(t, host+"/app:1", busybox(t))

	opts := Options{StoreDir: t.TempDir(), Registry: &agentapi.RegistryOptions{Mirrors: map[string]string{decoyHost: "http://" + host}}}
	img, err := Pull(context.Background(), decoyHost+"/app:1", opts)
	if err != nil {
		t.Fatal(err)
	}
	if img.Response.Image != decoyHost+"/app:1" {
		t.Errorf("response image = %s, want the reference as requested", img.Response.Image)
	}
	if hits.Load() != 0 {
		t.Errorf("the registry named in the reference was contacted %d times", hits.Load())
	}
}

// TestPullHTTPS pulls over TLS with a CA the options name, and no
// insecure registries.
func TestPullHTTPS(t *testing.T) {
	plain := startRegistry(t, nil)
	push(t, plain+"/app:1", busybox(t))
	// Serve the same registry content over TLS by proxying to it.
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r2 := r.Clone(r.Context())
		r2.URL.Scheme, r2.URL.Host, r2.RequestURI = "http", plain, ""
		resp, err := http.DefaultTransport.RoundTrip(r2)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		w.Write(buf.Bytes())
	}))
	t.Cleanup(tlsSrv.Close)
	host := strings.TrimPrefix(tlsSrv.URL, "https://")
	pool := tlsSrv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs

	if _, err := Pull(context.Background(), host+"/app:1", Options{StoreDir: t.TempDir(), RootCAs: pool}); err != nil {
		t.Fatalf("pull over HTTPS: %v", err)
	}
	// Without the CA the registry's certificate is not trusted.
	_, err := Pull(context.Background(), host+"/app:1", Options{StoreDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("error = %v, want a certificate error", err)
	}
}

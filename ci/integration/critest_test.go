package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cloak-containers/cloak/internal/testutil"
)

// critestSkips are the critest specs (regular expressions on their full
// text) that cannot run here or cannot apply to a VM runtime; docs/critest.md
// gives the reason for each. Skipped for every handler.
var critestSkips = []string{
	// The host kernel's LSMs: not loaded on the test machines.
	`AppArmor`, `SELinux`,
	// containerd's NRI plugin is disabled; critest needs its socket.
	`\[k8s\.io\] NRI`,
	// Pinned upstream digests: a locally built image cannot have them.
	`digest`, `Image Identifier Consistency`,
	// A setuid test program (e2e-test-images/nonewprivs) not rebuilt here.
	`NoNewPrivs`,
}

// critestCloakSkips are skipped for the cloak handlers only.
var critestCloakSkips = []string{
	// Host paths, host namespaces and host devices are refused by design:
	// the confidential guest shares nothing with the host.
	`HostPath`, `[Hh]ost[Nn]etwork`, `[Hh]ost [Nn]etwork`, `[Hh]ost[Pp]id`, `[Hh]ost [Pp]id`, `[Hh]ost[Ii]pc`, `[Hh]ost [Ii]pc`,
	`Mount Propagation`, `Image Volume`, `privileged`,
}

// critestFocus limits the cloak run to the groups that fit the test budget
// (each pod boots a VM under TCG); docs/critest.md lists what is left out.
var critestCloakFocus = []string{
	`\[k8s\.io\] PodSandbox`, `\[k8s\.io\] Container `, `\[k8s\.io\] Streaming`, `\[k8s\.io\] Runtime info`,
	`\[k8s\.io\] Multiple Containers`, `\[k8s\.io\] Idempotence`, `\[k8s\.io\] Image Manager`,
}

// TestCritest runs cri-tools' validation suite (critest) through
// containerd's CRI against runc and the cloak handler, and fails when fewer
// specs pass than testdata/cri/critest-baseline.txt records.
func TestCritest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the CRI validation suite")
	}
	baseline := readCritestBaseline(t)
	e := startCRI(t, criOptions{cloak: true, extraImages: pushCritestImages, registryAliases: critestRegistries})
	for _, h := range []struct {
		handler      string
		skips, focus []string
	}{
		{handler: handlerRunc, skips: critestSkips},
		{handler: handlerCloak, skips: append(append([]string{}, critestSkips...), critestCloakSkips...), focus: critestCloakFocus},
	} {
		t.Run(h.handler, func(t *testing.T) {
			want, ok := baseline[h.handler]
			if !ok {
				t.Fatalf("testdata/cri/critest-baseline.txt has no line for handler %s", h.handler)
			}
			r := e.critest(t, h.handler, h.focus, h.skips)
			t.Logf("critest %s: %d passed, %d failed, %d skipped of %d specs in %.0fs (baseline: %d passed)",
				h.handler, len(r.passed), len(r.failed), r.skipped, r.total, r.duration.Seconds(), want)
			for _, f := range r.failed {
				t.Logf("failed: %s", f)
			}
			if len(r.passed) < want {
				t.Errorf("critest %s: %d specs passed, baseline %d: a regression (failed specs above)", h.handler, len(r.passed), want)
			}
			if len(r.passed) > want {
				t.Logf("critest %s passes more than the baseline: raise it to %d in testdata/cri/critest-baseline.txt", h.handler, len(r.passed))
			}
			e.assertClean(t)
		})
	}
}

// readCritestBaseline reads "HANDLER MIN_PASSED" lines.
func readCritestBaseline(t *testing.T) map[string]int {
	t.Helper()
	f, err := os.Open("testdata/cri/critest-baseline.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	baseline := map[string]int{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		n := -1
		if len(fields) == 2 {
			n, _ = strconv.Atoi(fields[1])
		}
		if n < 0 {
			t.Fatalf("critest-baseline.txt: %q: want \"HANDLER MIN_PASSED\"", line)
		}
		baseline[fields[0]] = n
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return baseline
}

// critestResult is what one critest run did.
type critestResult struct {
	passed, failed []string
	skipped, total int
	duration       time.Duration
}

// critest runs the suite for handler, in containerd's network namespace (the
// streaming tests dial the stream server there), and reads its Ginkgo JSON
// report.
func (e *criEnv) critest(t *testing.T, handler string, focus, skips []string) critestResult {
	t.Helper()
	report := filepath.Join(t.TempDir(), "critest.json")
	endpoint := "unix://" + e.address
	args := []string{
		"--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
		"--runtime-handler", handler,
		"--config", filepath.Join(e.dir, "crictl.yaml"),
		"--ginkgo.no-color", "--ginkgo.json-report", report,
		"--ginkgo.skip", strings.Join(skips, "|"),
	}
	if len(focus) > 0 {
		args = append(args, "--ginkgo.focus", strings.Join(focus, "|"))
	}
	cmd := exec.Command(filepath.Join(e.toolsDir, "critest"), args...)
	logPath := filepath.Join(t.TempDir(), "critest.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = t.TempDir()
	start := time.Now()
	if err := startIn(e.ns, cmd); err != nil {
		t.Fatal(err)
	}
	// A failing spec makes critest exit non-zero; the report counts.
	runErr := cmd.Wait()
	r := critestResult{duration: time.Since(start)}
	raw, err := os.ReadFile(report)
	if err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("critest wrote no report (%v, exit: %v):\n%s", err, runErr, tailLines(string(b), 60))
	}
	var suites []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(raw, &suites); err != nil {
		t.Fatalf("critest report: %v", err)
	}
	for _, s := range suites {
		for _, spec := range s.SpecReports {
			if spec.LeafNodeType != "It" {
				continue
			}
			r.total++
			name := strings.Join(append(spec.ContainerHierarchyTexts, spec.LeafNodeText), " ")
			switch spec.State {
			case "passed":
				r.passed = append(r.passed, name)
			case "skipped", "pending":
				r.skipped++
			default:
				msg := strings.Join(strings.Fields(spec.Failure.Message), " ")
				if len(msg) > 600 {
					msg = msg[:600] + "..."
				}
				r.failed = append(r.failed, name+" ("+spec.State+": "+msg+")")
			}
		}
	}
	sort.Strings(r.failed)
	if r.total == 0 {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("critest ran no spec (exit: %v):\n%s", runErr, tailLines(string(b), 60))
	}
	return r
}

// critestRegistries are the registries critest pulls from; containerd and
// the guests reach them as the test registry (criOptions.registryAliases).
var critestRegistries = []string{"registry.k8s.io", "gcr.io", "k8s.gcr.io"}

// pushCritestImages pushes the images critest pulls, under their public
// paths and tags: a busybox with every applet and the users and groups of
// cri-tools' images/, the image-list and image-user variants built on it,
// and busybox httpd standing in for the nginx and httpd web servers.
func pushCritestImages(t *testing.T, registryHost string) {
	base := critestBusybox(t)
	pushVariant := func(ref, file, user string, cmd ...string) {
		t.Helper()
		img := base
		if file != "" {
			var err error
			img, err = mutate.AppendLayers(img, tarLayer(t, map[string]string{file: file + "\n"}))
			if err != nil {
				t.Fatal(err)
			}
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.Config.User = user
		if len(cmd) > 0 {
			cf.Config.Cmd = cmd
		}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		push(t, registryHost+"/"+ref, img)
	}
	const e2e, staging = "e2e-test-images/", "k8s-staging-cri-tools/"
	pushVariant(e2e+"busybox:1.29-2", "", "")
	web := func(port string) []string { return []string{"httpd", "-f", "-p", port, "-h", "/var/www"} }
	pushVariant(e2e+"nginx:1.14-2", "var/www/index.html", "", web("80")...)
	pushVariant(e2e+"httpd:2.4.39-4", "var/www/index.html", "", web("80")...)
	pushVariant(staging+"hostnet-nginx-amd64:latest", "var/www/index.html", "", web("12003")...)
	// Distinct from the busybox stand-in: critest counts the tags of one image.
	pushVariant("pause:3.9", "pause", "")
	for _, name := range []string{"test-image-1", "test-image-2", "test-image-3", "test-image-latest"} {
		pushVariant(staging+name+":latest", name, "")
	}
	for _, tag := range []string{"1", "2", "3"} {
		pushVariant(staging+"test-image-tags:"+tag, "same-image", "")
	}
	for _, tag := range []string{"test", "all"} {
		pushVariant(staging+"test-image-tag:"+tag, tag, "")
	}
	for repo, user := range map[string]string{
		"test-image-user-uid": "1002", "test-image-user-username": "www-data",
		"test-image-user-uid-group": "1003:1004", "test-image-user-username-group": "www-data:1004",
		"test-image-predefined-group": "1000",
	} {
		pushVariant(staging+repo+":latest", "", user)
	}
}

// critestBusybox is Debian's static busybox with every applet linked, and
// the accounts of cri-tools' test images.
func critestBusybox(t *testing.T) v1.Image {
	t.Helper()
	list, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Fatalf("busybox-static is needed for test images (ci/vm-deps.sh installs it): %v", err)
	}
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "home/", "var/", "var/www/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		add(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin))}, bin)
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox"}, nil)
		}
	}
	for name, content := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n" +
			"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
		"etc/group": "root:x:0:\nwww-data:x:33:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n",
	} {
		add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(content))}, []byte(content))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(testutil.BytesOpener(buf.Bytes()), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return busyboxImage(t, layer, mutate.Addendum{})
}

// tarLayer is a layer holding the regular files name -> content.
func tarLayer(t *testing.T, files map[string]string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(content))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(testutil.BytesOpener(buf.Bytes()), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return layer
}

package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPodSecrets: a workload's own secrets, through a real containerd, the
// cloak shim and a guest on a pod network (the netns CNI would set up; the
// KBS and the registry are reached through proxies on its gateway), with a
// real KBS that releases only to the attested sample-TEE guest:
//
//   - a container fetches a resource from the in-guest API at
//     127.0.0.1:8006 and gets the KBS's bytes; a path the resource policy
//     refuses is 403 with the policy's reason, an unknown one 404;
//   - nothing answers on port 8006 from outside the guest: not on the pod's
//     address from the pod network (while another guest port does), not on
//     loopback in the pod netns or on the host;
//   - a sealed env value and a sealed file in a Secret volume reach the
//     process as plaintext; a wrongly signed, truncated or unknown-resource
//     sealed file refuses the container start with SEALED_SECRET, nothing
//     runs;
//   - no plaintext is anywhere in containerd's root and state, the shim's
//     run directory or the guest console logs;
//   - with the KBS down, the API answers 503 within the retry budget.
func TestPodSecrets(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e, imageDir, registryHost, ref := containerdWithBusybox(t)
	pod := newPodNetNS(t)
	mirror := serveIn(t, pod.peer, httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: registryHost}))

	dir := t.TempDir()
	adminKey, adminPub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	mustRun(t, nil, "kbsctl", "keygen", "--private-key", adminKey, "--public-key", adminPub)
	kbs := startKBSBinary(t, filepath.Join(dir, "kbs"), "--admin-public-key", adminPub, "--tls-san", podGateway)
	ctl := func(args ...string) []string {
		return append([]string{"--url", kbs.url, "--cacert", kbs.ca, "--admin-key", adminKey}, args...)
	}
	u, err := url.Parse(kbs.url)
	if err != nil {
		t.Fatal(err)
	}
	guestKBS := serveTCPProxyIn(t, pod.peer, net.JoinHostPort(podGateway, "0"), u.Host)

	// Fresh values per run, so that finding one on the host means this run
	// leaked it.
	fetched, denied, sealedEnv, sealedFile := randomValue(t, "fetched"), randomValue(t, "denied"), randomValue(t, "env"), randomValue(t, "file")
	for path, v := range map[string]string{
		"default/app/fetched": fetched, "default/app/denied": denied,
		"default/app/sealed-env": sealedEnv, "default/app/sealed-file": sealedFile,
	} {
		mustRun(t, []byte(v), "kbsctl", ctl("resource", "set", path, "--file", "-")...)
	}
	signing, otherSigning := filepath.Join(dir, "signing.jwk"), filepath.Join(dir, "other.jwk")
	pub := mustRun(t, nil, "kbsctl", "secret", "keygen", "--out", signing)
	mustRun(t, nil, "kbsctl", "secret", "keygen", "--out", otherSigning)
	mustRun(t, []byte(pub), "kbsctl", ctl("resource", "set", "default/sealing/pub", "--file", "-")...)
	seal := func(resource, key string) string {
		return strings.TrimSpace(mustRun(t, nil, "kbsctl", "secret", "seal", resource, "--signing-key", key, "--kid", "kbs:///default/sealing/pub"))
	}
	mustRun(t, nil, "kbsctl", ctl("reference-value", "set", "sample_svn", "1")...)
	policy := filepath.Join(dir, "policy.rego")
	mustWrite(t, policy, `package policy

import rego.v1

default allow := false

allow if {
	input.submods.cpu0["ear.status"] == "affirming"
	not other_workload
}

other_workload if data["resource-path"] == "default/app/denied"

reasons contains "default/app/denied belongs to another workload" if other_workload
`)
	mustRun(t, nil, "kbsctl", ctl("resource-policy", "set", "--file", policy)...)

	caPEM, err := os.ReadFile(kbs.ca)
	if err != nil {
		t.Fatal(err)
	}
	initdata := initdataFor("https://"+guestKBS, caPEM)
	digest := sha512.Sum384(initdata)
	mustRun(t, nil, "kbsctl", ctl("reference-value", "set", "init_data", hex.EncodeToString(digest[:]))...)
	initdataFile := filepath.Join(dir, "initdata.toml")
	mustWrite(t, initdataFile, string(initdata))

	// The VMs' sockets and consoles (shown when the test fails); the
	// configuration is this test's: the guest is on the pod network.
	vms := newCloakVMs(t, imageDir, registryHost)
	runDir, consoleDir := vms.runDir, vms.consoleDir
	cloakConfig := filepath.Join(t.TempDir(), "cloak.toml")
	mustWrite(t, cloakConfig, fmt.Sprintf(`image_dir = %q
vcpus = 1
memory_mib = 512
run_dir = %q
console_log_dir = %q
agent_timeout_seconds = 120
[registry]
insecure = [%q]
mirrors = { %q = "http://%s" }
[kbs]
initdata_file = %q
`, imageDir, runDir, consoleDir, registryHost, registryHost, mirror, initdataFile))
	cloakArgs := []string{"--runtime", cloakRuntime, "--runtime-config-path", cloakConfig, "--with-ns", "network:" + pod.path}
	run := func(t *testing.T, id string, extra []string, args ...string) ctrResult {
		t.Helper()
		full := append(append(append([]string{"run", "--rm"}, cloakArgs...), extra...), ref, id)
		start := time.Now()
		r, err := e.ctr(t, nil, append(full, args...)...)
		if err != nil && r.code == 0 {
			t.Fatal(err)
		}
		t.Logf("ctr run %s: exit %d in %.1fs", id, r.code, time.Since(start).Seconds())
		return r
	}
	// nc shows the status line and the reason, which wget does not.
	httpGet := func(path string) string {
		return `printf 'GET ` + path + ` HTTP/1.0\r\n\r\n' | nc 127.0.0.1 8006 | tr -d '\r'`
	}

	t.Run("resource API", func(t *testing.T) {
		start := time.Now()
		r := run(t, "secrets-api", nil, "sh", "-c",
			"wget -qO- http://127.0.0.1:8006/cdh/resource/default/app/fetched; echo; echo ---; "+
				httpGet("/cdh/resource/default/app/denied")+"; echo ---; "+httpGet("/cdh/resource/default/app/missing"))
		if r.code != 0 {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		parts := strings.Split(r.stdout, "---\n")
		if len(parts) != 3 {
			t.Fatalf("stdout %q: want three answers", r.stdout)
		}
		if parts[0] != fetched+"\n" {
			t.Errorf("fetched %q, want the KBS's %q", parts[0], fetched)
		}
		if !strings.HasPrefix(parts[1], "HTTP/1.0 403 Forbidden\n") || !strings.Contains(parts[1], "default/app/denied belongs to another workload") {
			t.Errorf("denied path answered %q; want 403 with the resource policy's reason", parts[1])
		}
		if strings.Contains(parts[1], denied) {
			t.Errorf("the refusal carries the denied value")
		}
		if !strings.HasPrefix(parts[2], "HTTP/1.0 404 Not Found\n") || !strings.Contains(parts[2], "kbs has no resource default/app/missing") {
			t.Errorf("missing path answered %q; want 404 naming the resource", parts[2])
		}
		t.Logf("the refusal as the container sees it:\n%s", parts[1])
		t.Logf("pod with three API calls: %.1fs", time.Since(start).Seconds())
	})

	t.Run("nothing answers from outside the guest", func(t *testing.T) {
		id := "secrets-listener"
		e.mustCtr(t, append(append([]string{"run", "-d"}, cloakArgs...), ref, id, "sh", "-c", "echo up | nc -l -p 8007; sleep 600")...)
		defer func() {
			_, _ = e.ctr(t, nil, "task", "kill", "-s", "SIGKILL", id)
			waitStopped(t, e, id)
			deleteTask(t, e, id)
			_, _ = e.ctr(t, nil, "container", "rm", id)
		}()
		podIP, _, _ := strings.Cut(podAddr, "/")
		// The control: the pod network reaches a port the guest opened on
		// all its addresses (the listener may take a moment to start).
		var got string
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) && got == "" {
			_ = onThreadIn(pod.peer, func() error {
				c, err := net.DialTimeout("tcp", net.JoinHostPort(podIP, "8007"), 2*time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				got = line
				return nil
			})
			if got == "" {
				time.Sleep(500 * time.Millisecond)
			}
		}
		if got != "up\n" {
			t.Fatalf("the control port 8007 on the pod address answered %q: the pod network does not reach the guest, so the checks below would prove nothing", got)
		}
		for _, where := range []struct {
			name, addr string
			in         func(func() error) error
		}{
			{"the pod's address from the pod network", net.JoinHostPort(podIP, "8006"), func(f func() error) error { return onThreadIn(pod.peer, f) }},
			{"loopback in the pod netns (QEMU's side)", "127.0.0.1:8006", func(f func() error) error { return onThreadIn(pod.pod, f) }},
			{"the host's loopback", "127.0.0.1:8006", func(f func() error) error { return f() }},
		} {
			var dialErr error
			var answer []byte
			_ = where.in(func() error {
				c, err := net.DialTimeout("tcp", where.addr, 5*time.Second)
				if dialErr = err; err != nil {
					return nil
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = io.WriteString(c, "GET /cdh/resource/default/app/fetched HTTP/1.0\r\n\r\n")
				answer, _ = io.ReadAll(c)
				return nil
			})
			switch {
			case dialErr == nil && bytes.Contains(answer, []byte(fetched)):
				t.Errorf("%s (%s) released the resource: %q", where.name, where.addr, answer)
			case dialErr == nil && where.name != "the host's loopback":
				t.Errorf("%s (%s) accepted a connection (answer %q); want it refused", where.name, where.addr, answer)
			case dialErr == nil:
				t.Logf("something else listens on the host's %s; it did not have the resource", where.addr)
			case !errors.Is(dialErr, syscall.ECONNREFUSED):
				t.Errorf("%s (%s): %v; want the connection refused", where.name, where.addr, dialErr)
			}
		}
	})

	t.Run("sealed env and sealed file", func(t *testing.T) {
		volume := secretVolume(t, map[string]string{"db-password": seal("kbs:///default/app/sealed-file", signing) + "\n"})
		r := run(t, "secrets-sealed", []string{"--env", "DB_TOKEN=" + seal("kbs:///default/app/sealed-env", signing),
			"--mount", "type=bind,src=" + volume + ",dst=/secrets,options=rbind:ro"},
			"sh", "-c", `echo "$DB_TOKEN"; cat /secrets/db-password`)
		if want := sealedEnv + "\n" + sealedFile; r.code != 0 || r.stdout != want {
			t.Fatalf("exit %d, stdout %q, stderr %q; want %q", r.code, r.stdout, r.stderr, want)
		}
	})

	t.Run("bad sealed files refuse the start", func(t *testing.T) {
		good := seal("kbs:///default/app/sealed-file", signing)
		for name, v := range map[string]string{
			"wrong signer":     seal("kbs:///default/app/sealed-file", otherSigning),
			"truncated":        good[:len(good)-16],
			"unknown resource": seal("kbs:///default/app/none", signing),
		} {
			id := "secrets-bad-" + strings.ReplaceAll(name, " ", "-")
			volume := secretVolume(t, map[string]string{"db-password": v})
			r := run(t, id, []string{"--mount", "type=bind,src=" + volume + ",dst=/secrets,options=rbind:ro"}, "sh", "-c", "echo STARTED")
			if r.code == 0 || strings.Contains(r.stdout, "STARTED") {
				t.Errorf("%s: exit %d stdout %q: the container started", name, r.code, r.stdout)
			}
			if !strings.Contains(r.stderr, "sealed secret") || !strings.Contains(r.stderr, "db-password") {
				t.Errorf("%s: stderr %q; want the sealed-secret refusal naming the file", name, r.stderr)
			}
			t.Logf("%s: %s", name, containerStderr(r.stderr))
			if out := e.mustCtr(t, "task", "ls").stdout; strings.Contains(out, id) {
				t.Errorf("%s: a task is left: %s", name, out)
			}
		}
	})

	t.Run("no plaintext on the host", func(t *testing.T) {
		hostDirs := []string{filepath.Dir(e.address), runDir, consoleDir}
		for name, v := range map[string]string{"fetched": fetched, "sealed env": sealedEnv, "sealed file": sealedFile} {
			for _, d := range hostDirs {
				if f := fileContaining(t, d, v); f != "" {
					t.Errorf("the %s plaintext is on the host in %s", name, f)
				}
			}
		}
	})

	t.Run("KBS down", func(t *testing.T) {
		kbs.stop(t)
		start := time.Now()
		r := run(t, "secrets-kbs-down", nil, "sh", "-c", `date +%s; `+httpGet("/cdh/resource/default/app/fetched")+`; date +%s`)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) < 3 || !strings.HasPrefix(lines[1], "HTTP/1.0 503 Service Unavailable") ||
			!strings.Contains(r.stdout, "retry budget") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 503 naming the retry budget", r.code, r.stdout, r.stderr)
		}
		var from, to int64
		if _, err := fmt.Sscan(lines[0], &from); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Sscan(lines[len(lines)-1], &to); err != nil {
			t.Fatal(err)
		}
		// rcar's budget is 30 s a call; the answer must not wait longer.
		if took := to - from; took > 35 {
			t.Errorf("the 503 took %ds, more than the 30 s retry budget", took)
		} else {
			t.Logf("503 after %ds in the guest (pod %.1fs)", took, time.Since(start).Seconds())
		}
		if strings.Contains(r.stdout, podGateway) || strings.Contains(r.stdout, "refused") {
			t.Errorf("the 503 leaks the KBS address or the dial error: %q", r.stdout)
		}
	})
}

// randomValue is a fresh secret for one run.
func randomValue(t *testing.T, what string) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return what + "-" + hex.EncodeToString(b)
}

// secretVolume lays files out as kubelet writes a Secret volume
// (.../volumes/kubernetes.io~secret/NAME with ..data) and returns its path.
func secretVolume(t *testing.T, files map[string]string) string {
	t.Helper()
	vol := filepath.Join(t.TempDir(), "pods", "uid-1", "volumes", "kubernetes.io~secret", "db")
	ts := "..2026_12_06_21_00_00.000000001"
	for name, content := range files {
		mustWrite(t, filepath.Join(vol, ts, name), content)
		mustSymlink(t, "..data/"+name, filepath.Join(vol, name))
	}
	mustSymlink(t, ts, filepath.Join(vol, "..data"))
	return vol
}

// fileContaining returns a file under dir whose bytes contain s, "" when
// none does (grep -r).
func fileContaining(t *testing.T, dir, s string) string {
	t.Helper()
	found := ""
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || found != "" || !d.Type().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(s)) {
			found = p
		}
		return nil
	})
	return found
}

package integration

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCRIRunc drives containerd's CRI with crictl and the runc handler: the
// same pod lifecycle as the cloak tests, to validate the harness itself.
func TestCRIRunc(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd with CRI")
	}
	e := startCRI(t, criOptions{})
	criPodLifecycle(t, e, handlerRunc)
}

// TestCRICloak runs a pod with two busybox containers through containerd's
// CRI with each cloak handler: both containers share the pod's one VM; logs,
// exec and stop work as with runc; nothing is left after the pod is removed.
func TestCRICloak(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := startCRI(t, criOptions{cloak: true, guestPull: true})
	for _, handler := range []string{handlerCloak, handlerCloakEmulated} {
		t.Run(handler, func(t *testing.T) { criPodLifecycle(t, e, handler) })
	}
	// Guest pull: CRI pulled busybox for the cloak pods through
	// cloak-snapshotter, so the host holds its manifest and config only.
	blobs := registryBlobs(t, e.busybox)
	out, err := exec.Command(filepath.Join(e.bin, "ctr"), "--address", e.address, "--namespace", "k8s.io", "content", "ls", "--quiet").Output()
	if err != nil {
		t.Fatalf("ctr content ls: %v", err)
	}
	content := strings.Fields(string(out))
	if !slices.Contains(content, blobs.manifest) {
		t.Errorf("content store lacks busybox's manifest %s: the pods' image was not pulled by CRI", blobs.manifest)
	}
	for _, l := range blobs.layers {
		if slices.Contains(content, l) {
			t.Errorf("content store holds busybox layer %s: the cloak handlers' pull did not skip it", l)
		}
	}
}

// criLeakCycles is how many pods TestCRICloakLeak runs and removes one
// after the other: enough to make a per-pod leak (a QEMU, a shim, a mount,
// a netns) obvious, few enough to stay near 3 minutes under TCG.
const criLeakCycles = 20

// TestCRICloakLeak runs criLeakCycles one-container pods with the cloak
// handler, removing each, and then checks that nothing is left.
func TestCRICloakLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := startCRI(t, criOptions{cloak: true, guestPull: true})
	begin := time.Now()
	for i := 0; i < criLeakCycles; i++ {
		name := fmt.Sprintf("leak-%d", i)
		pod := e.podConfig(t, name, handlerCloak)
		want := fmt.Sprintf("cycle %d done", i)
		ctr := e.containerConfig(t, name, "c", "echo", want)
		start := time.Now()
		// crictl run: runp + create + start in one call.
		id := e.mustCrictl(t, "run", "--runtime", handlerCloak, ctr, pod)
		e.waitLogs(t, id, want+"\n")
		if n := len(e.qemuPids(t)); n != 1 {
			t.Errorf("cycle %d: %d QEMU processes while one pod runs, want 1", i, n)
		}
		podID := e.mustCrictl(t, "pods", "-q", "--name", name)
		e.mustCrictl(t, "stopp", podID)
		e.mustCrictl(t, "rmp", podID)
		t.Logf("cycle %d: run, logs, stopp, rmp in %.1fs", i, time.Since(start).Seconds())
	}
	t.Logf("%d pods in %.1fs", criLeakCycles, time.Since(begin).Seconds())
	if left := e.mustCrictl(t, "pods", "-q"); left != "" {
		t.Errorf("pods left after rmp: %s", left)
	}
	e.assertClean(t)
}

// criPodLifecycle runs a pod with two containers with handler: runp,
// create, start, logs, exec -s, stop, stopp, rmp; then nothing may be left.
func criPodLifecycle(t *testing.T, e *criEnv, handler string) {
	begin := time.Now()
	step := func(what string, start time.Time) {
		t.Logf("%s: %s in %.2fs", handler, what, time.Since(start).Seconds())
	}
	name := "pod-" + handler
	pod := e.podConfig(t, name, handler)
	start := time.Now()
	podID := e.mustCrictl(t, "runp", "--runtime", handler, pod)
	step("runp", start)
	var status struct {
		Status struct {
			State          string `json:"state"`
			RuntimeHandler string `json:"runtimeHandler"`
			Network        struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(e.mustCrictl(t, "inspectp", "-o", "json", podID)), &status); err != nil {
		t.Fatalf("crictl inspectp: %v", err)
	}
	if status.Status.State != "SANDBOX_READY" || status.Status.RuntimeHandler != handler {
		t.Errorf("pod state %q handler %q, want SANDBOX_READY and %q", status.Status.State, status.Status.RuntimeHandler, handler)
	}
	if !strings.HasPrefix(status.Status.Network.IP, "10.88.") {
		t.Errorf("pod IP %q, want one from CNI's %s", status.Status.Network.IP, criSubnet)
	}

	// Each container prints on stdout and stderr, then waits; TERM ends it
	// with status 0 (sh as PID 1 would otherwise ignore TERM).
	ids := map[string]string{}
	for _, c := range []string{"one", "two"} {
		cfg := e.containerConfig(t, name, c, "sh", "-c",
			fmt.Sprintf("trap 'exit 0' TERM; echo hello from %[1]s; echo warning from %[1]s >&2; sleep 600 & wait", c))
		start := time.Now()
		ids[c] = e.mustCrictl(t, "create", podID, cfg, pod)
		step("create "+c, start)
		start = time.Now()
		e.mustCrictl(t, "start", ids[c])
		step("start "+c, start)
	}
	for c, id := range ids {
		out := e.waitLogs(t, id, "hello from "+c+"\n")
		if strings.Contains(out, "warning") {
			t.Errorf("crictl logs %s: stderr on stdout: %q", c, out)
		}
		r, err := e.crictl(t, "logs", id)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(r.stderr, "warning from "+c+"\n") {
			t.Errorf("crictl logs %s: stderr %q, want the container's stderr line", c, r.stderr)
		}
	}
	if handler != handlerRunc {
		if qemus := e.qemuPids(t); len(qemus) != 1 {
			t.Errorf("%d QEMU processes (%v) for one pod with two containers, want 1", len(qemus), qemus)
		}
	}

	// crictl exec -s prints the command's stdout and then its stderr, each
	// followed by a newline; a non-zero exit is an error (crictl exits 1)
	// naming the code and the command's stderr.
	t.Run("exec -s", func(t *testing.T) {
		start := time.Now()
		r, err := e.crictl(t, "exec", "-s", ids["one"], "cat", "/etc/recipe.txt")
		step("exec -s", start)
		if err != nil {
			t.Fatal(err)
		}
		if r.stdout != "the secret recipe\n\n\n" {
			t.Errorf("exec cat: stdout %q, want the image's file", r.stdout)
		}
		r, err = e.crictl(t, "exec", "-s", ids["two"], "sh", "-c", "echo out; echo err >&2")
		if err != nil || r.stdout != "out\n\nerr\n\n" {
			t.Errorf("exec with stdout and stderr: %q (%v), want \"out\\n\\nerr\\n\\n\"", r.stdout, err)
		}
		r, _ = e.crictl(t, "exec", "-s", ids["two"], "sh", "-c", "echo err >&2; exit 7")
		if r.code != 1 || !strings.Contains(r.stderr, "exited with 7: err") {
			t.Errorf("exec with exit 7: crictl exit %d stderr %q, want 1 and \"exited with 7: err\"", r.code, r.stderr)
		}
		// The pod's sysctls (podConfig): the network one for the pod's
		// network, the IPC one in every container.
		for _, id := range []string{ids["one"], ids["two"]} {
			r, err = e.crictl(t, "exec", "-s", id, "cat", "/proc/sys/net/core/somaxconn", "/proc/sys/kernel/shm_rmid_forced")
			if err != nil || r.stdout != "1234\n1\n\n\n" {
				t.Errorf("pod sysctls in a container: %q (%v), want somaxconn 1234 and shm_rmid_forced 1", r.stdout, err)
			}
		}
		r, err = e.crictl(t, "exec", "-s", ids["one"], "/bin/nonexistent")
		if err == nil {
			t.Errorf("exec of a missing binary succeeded: %q", r.stdout)
		}
	})
	t.Run("containers share the pod network", func(t *testing.T) {
		for _, c := range []string{"one", "two"} {
			r, err := e.crictl(t, "exec", "-s", ids[c], "ip", "-4", "-o", "addr", "show", "eth0")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(r.stdout, "inet "+status.Status.Network.IP+"/") {
				t.Errorf("container %s: eth0 %q, want the pod IP %s", c, r.stdout, status.Status.Network.IP)
			}
		}
	})

	for c, id := range ids {
		start := time.Now()
		e.mustCrictl(t, "stop", "--timeout", "30", id)
		step("stop "+c, start)
		var cs struct {
			Status struct {
				State    string `json:"state"`
				ExitCode int    `json:"exitCode"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(e.mustCrictl(t, "inspect", "-o", "json", id)), &cs); err != nil {
			t.Fatalf("crictl inspect: %v", err)
		}
		if cs.Status.State != "CONTAINER_EXITED" || cs.Status.ExitCode != 0 {
			t.Errorf("container %s after stop: %s exit %d, want CONTAINER_EXITED exit 0 (its TERM trap)", c, cs.Status.State, cs.Status.ExitCode)
		}
	}
	start = time.Now()
	e.mustCrictl(t, "stopp", podID)
	step("stopp", start)
	start = time.Now()
	e.mustCrictl(t, "rmp", podID)
	step("rmp", start)
	if r, err := e.crictl(t, "inspectp", podID); err == nil {
		t.Errorf("pod %s still known after rmp: %s", podID, r.stdout)
	}
	e.assertClean(t)
	step("whole pod", begin)
}

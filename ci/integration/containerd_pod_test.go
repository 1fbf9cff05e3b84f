package integration

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The annotations containerd's CRI plugin writes; set by hand here so that
// the shim's pod model is tested through plain ctr (the CRI tests drive the
// same through crictl).
const (
	criSandboxAnnotation = "io.kubernetes.cri.container-type=sandbox"
	criContainerType     = "io.kubernetes.cri.container-type=container"
	criSandboxID         = "io.kubernetes.cri.sandbox-id="
)

// TestContainerdPodSandbox: the containers of one pod share the VM their
// sandbox task started, in one shim; the sandbox task stands for the VM
// (its pid is QEMU's, exec into it is refused) and killing it ends the pod.
// Pod annotations resize the VM only when the handler allows them.
func TestContainerdPodSandbox(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e, imageDir, registryHost, ref := containerdWithBusybox(t)
	vms := newCloakVMs(t, imageDir, registryHost)
	runDir := vms.runDir
	cloakConfig := vms.config(t, `allowed_annotations = ["vcpus"]`)
	t.Cleanup(func() {
		e.removeAll(t)
		waitNoPids(t, runDir, 30*time.Second)
	})
	cloak := []string{"--runtime", cloakRuntime, "--runtime-config-path", cloakConfig}
	inPod := func(sb string) []string {
		return append(slices.Clone(cloak), "--annotation", criContainerType, "--annotation", criSandboxID+sb)
	}
	shims := func() []int {
		var out []int
		for _, pid := range pidsWithArg(t, e.address) {
			if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.HasPrefix(string(raw), "containerd-shim") {
				out = append(out, pid)
			}
		}
		return out
	}

	const sb = "pod-sandbox"
	e.mustCtr(t, append(append([]string{"run", "-d"}, cloak...), "--annotation", criSandboxAnnotation,
		"--annotation", "io.cloak.vcpus=2", ref, sb, "pause-is-not-run")...)
	qemus := pidsWithArg(t, runDir)
	if len(qemus) != 1 {
		t.Fatalf("after the sandbox started: %d QEMU processes, want 1", len(qemus))
	}
	qemuPid := qemus[0]
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", qemuPid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cmdline), "\x00-smp\x002\x00") {
		t.Errorf("QEMU command line lacks -smp 2 from the pod's io.cloak.vcpus annotation: %q", cmdline)
	}
	out := e.mustCtr(t, "task", "ls").stdout
	if !taskListed(out, sb, qemuPid, "RUNNING") {
		t.Errorf("sandbox task is not RUNNING with QEMU's pid %d:\n%s", qemuPid, out)
	}

	t.Run("containers share the VM", func(t *testing.T) {
		r := e.mustCtr(t, append(append([]string{"run", "--rm"}, inPod(sb)...), ref, "c1", "sh", "-c", "echo hello from c1; cat /proc/cpuinfo | grep -c ^processor")...)
		if r.stdout != "hello from c1\n2\n" {
			t.Errorf("c1 printed %q, want its greeting and the pod VM's 2 CPUs", r.stdout)
		}
		e.mustCtr(t, append(append([]string{"run", "-d"}, inPod(sb)...), ref, "c2", "sleep", "1000")...)
		r, err := e.ctr(t, nil, "task", "exec", "--exec-id", "x1", "c2", "sh", "-c", "echo exec-ok; exit 4")
		if r.code != 4 || r.stdout != "exec-ok\n" {
			t.Errorf("exec in c2: exit %d stdout %q (%v), want 4 and exec-ok", r.code, r.stdout, err)
		}
		if got := pidsWithArg(t, runDir); !slices.Equal(got, []int{qemuPid}) {
			t.Errorf("QEMU processes %v, want only the pod's %d", got, qemuPid)
		}
		if got := shims(); len(got) != 1 {
			t.Errorf("%d shims serve the pod, want 1 (%v)", len(got), got)
		}
	})

	t.Run("exec into the sandbox is refused", func(t *testing.T) {
		r, err := e.ctr(t, nil, "task", "exec", "--exec-id", "x2", sb, "true")
		if err == nil || !strings.Contains(r.stderr, "pod sandbox is the VM") {
			t.Errorf("exec into the sandbox: %v, stderr %q; want a refusal naming the reason", err, r.stderr)
		}
	})

	t.Run("container without its sandbox", func(t *testing.T) {
		r, err := e.ctr(t, nil, append(append([]string{"run", "--rm"}, inPod("no-such-pod")...), ref, "orphan", "true")...)
		if err == nil || !strings.Contains(r.stderr, "has no VM in this shim") {
			t.Errorf("container of a missing pod: %v, stderr %q", err, r.stderr)
		}
		if got := pidsWithArg(t, runDir); !slices.Equal(got, []int{qemuPid}) {
			t.Errorf("QEMU processes %v after the refused container, want only %d", got, qemuPid)
		}
		_, _ = e.ctr(t, nil, "container", "delete", "orphan")
	})

	t.Run("annotation not allowed", func(t *testing.T) {
		r, err := e.ctr(t, nil, append(append([]string{"run", "--rm"}, cloak...), "--annotation", criSandboxAnnotation,
			"--annotation", "io.cloak.memory_mib=1024", ref, "pod-denied", "x")...)
		if err == nil || !strings.Contains(r.stderr, `add \"memory\" to allowed_annotations`) && !strings.Contains(r.stderr, `add "memory" to allowed_annotations`) {
			t.Errorf("pod with a memory annotation the handler does not allow: %v, stderr %q", err, r.stderr)
		}
		if got := pidsWithArg(t, runDir); !slices.Equal(got, []int{qemuPid}) {
			t.Errorf("QEMU processes %v after the refused pod, want only %d", got, qemuPid)
		}
		_, _ = e.ctr(t, nil, "container", "delete", "pod-denied")
	})

	t.Run("killing the sandbox ends the pod", func(t *testing.T) {
		e.mustCtr(t, "task", "kill", "--signal", "SIGTERM", sb)
		waitStopped(t, e, sb)
		waitStopped(t, e, "c2")
		waitNoPids(t, runDir, 30*time.Second)
		if code := deleteTask(t, e, "c2"); code != 137 {
			t.Errorf("c2 exit status %d after its pod's VM stopped, want 137", code)
		}
		if code := deleteTask(t, e, sb); code != 0 {
			t.Errorf("sandbox exit status %d after SIGTERM, want 0 (as pause)", code)
		}
		e.mustCtr(t, "container", "delete", "c2", sb)
		deadline := time.Now().Add(30 * time.Second)
		for len(shims()) > 0 && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if got := shims(); len(got) > 0 {
			t.Errorf("shims %v left after the pod was deleted", got)
		}
		if ents, _ := os.ReadDir(runDir); len(ents) > 0 {
			t.Errorf("run dir not empty: %v", ents)
		}
	})
}

// taskListed reports whether `ctr task ls` output lists id with pid and
// status.
func taskListed(out, id string, pid int, status string) bool {
	for _, m := range taskStatusRE.FindAllStringSubmatch(out, -1) {
		if m[1] == id && m[2] == strconv.Itoa(pid) && m[3] == status {
			return true
		}
	}
	return false
}

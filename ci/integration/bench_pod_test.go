package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// podBenchMemoryMiB is the VM size of the benchmark's cloak handler: the
// default of shim/config/handlers, which docs/kubernetes.md's pod overhead is
// computed for.
const podBenchMemoryMiB = 512

// BenchmarkPod times `ctr run --rm` of the same busybox echo through a real
// containerd with runc, with Cloak, and with gVisor's runsc where installed,
// in one run; then, as "idle", `ctr run -d` of a sleeping Cloak pod until it
// runs, with the memory (PSS) of its shim and QEMU.
//
//	make bench-pod
func BenchmarkPod(b *testing.B) {
	e, imageDir, registryHost, ref := containerdWithBusybox(b)
	vms := newCloakVMs(b, imageDir, registryHost)
	consoleDir := vms.consoleDir
	cloakConfig := vms.config(b, fmt.Sprintf("memory_mib = %d", podBenchMemoryMiB))
	cloakArgs := []string{"--runtime", cloakRuntime, "--runtime-config-path", cloakConfig}

	runtimes := []struct {
		name string
		args func(b *testing.B) []string
	}{
		{"runc", func(*testing.B) []string { return []string{"--runtime", runcRuntime} }},
		{"cloak", func(*testing.B) []string { return cloakArgs }},
		{"runsc", runscArgs},
	}
	seq := 0
	for _, rt := range runtimes {
		b.Run(rt.name, func(b *testing.B) {
			args := rt.args(b)
			for b.Loop() {
				seq++
				full := append(append([]string{"run", "--rm"}, args...), ref, fmt.Sprintf("%s-%d", rt.name, seq), "echo", "hello")
				if r := e.mustCtr(b, full...); r.stdout != "hello\n" {
					b.Fatalf("%s: ctr run echo hello: stdout %q, stderr %q", rt.name, r.stdout, r.stderr)
				}
			}
		})
	}

	b.Run("idle", func(b *testing.B) {
		var shimPSS, qemuPSS, qemuRest int64
		for b.Loop() {
			seq++
			id := fmt.Sprintf("idle-%d", seq)
			e.mustCtr(b, append(append([]string{"run", "-d"}, cloakArgs...), ref, id, "sleep", "3600")...)
			b.StopTimer()
			// This pod's QEMU: its command line names the pod's console log;
			// its parent is the pod's shim.
			console := filepath.Join(consoleDir, ctrNamespace+"-"+id+".log")
			qemuPid, shimPid := podProcesses(b, console)
			// Let boot-time work (page cache, the agent's image pull) settle.
			time.Sleep(2 * time.Second)
			shimPSS += smapsRollupPSS(b, shimPid)
			q := smapsRollupPSS(b, qemuPid)
			qemuPSS += q
			qemuRest += q - guestRAMPSS(b, qemuPid, podBenchMemoryMiB)
			e.mustCtr(b, "task", "delete", "--force", id)
			e.mustCtr(b, "container", "delete", id)
			waitGone(b, qemuPid, shimPid)
			b.StartTimer()
		}
		b.ReportMetric(float64(shimPSS)/float64(b.N)/(1<<20), "shim-pss-MiB")
		b.ReportMetric(float64(qemuPSS)/float64(b.N)/(1<<20), "qemu-pss-MiB")
		b.ReportMetric(float64(qemuRest)/float64(b.N)/(1<<20), "qemu-nonram-pss-MiB")
	})
}

// runscArgs are ctr's runtime arguments for gVisor, or a skip when it is not
// installed.
func runscArgs(b *testing.B) []string {
	for _, bin := range []string{"runsc", "containerd-shim-runsc-v1"} {
		if _, err := exec.LookPath(bin); err != nil {
			// Debian packages gVisor from trixie on; these machines reach
			// only Debian 12 and its backports.
			b.Skipf("gVisor is not installed (%s not on PATH): install Debian's runsc package (trixie or later) to compare", bin)
		}
	}
	return []string{"--runtime", "io.containerd.runsc.v1"}
}

// podProcesses finds the pod's QEMU by a string of its command line (exactly
// one) and its parent, the pod's containerd-shim-cloak-v2.
func podProcesses(b *testing.B, arg string) (qemuPid, shimPid int) {
	b.Helper()
	pids := pidsWithArg(b, arg)
	if len(pids) != 1 {
		b.Fatalf("want one QEMU with %q in its command line, found %v", arg, pids)
	}
	qemuPid = pids[0]
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", qemuPid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: state, ppid.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 2 {
		b.Fatalf("/proc/%d/stat: %q", qemuPid, stat)
	}
	if shimPid, err = strconv.Atoi(fields[1]); err != nil {
		b.Fatalf("/proc/%d/stat: parent %q", qemuPid, fields[1])
	}
	for pid, want := range map[int]string{qemuPid: "qemu-system-x86_64", shimPid: "containerd-shim-cloak-v2"} {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || filepath.Base(exe) != want {
			b.Fatalf("process %d runs %q (%v), want %s", pid, exe, err, want)
		}
	}
	return qemuPid, shimPid
}

// smapsRollupPSS is a process's proportional set size in bytes.
func smapsRollupPSS(b *testing.B, pid int) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "Pss:"); ok {
			return parseKB(b, rest)
		}
	}
	b.Fatalf("no Pss in /proc/%d/smaps_rollup (%v)", pid, s.Err())
	return 0
}

// guestRAMPSS is the PSS of QEMU's guest RAM: its anonymous mappings at least
// as large as the VM's memory. The rest of QEMU's PSS is its own overhead.
func guestRAMPSS(b *testing.B, pid, memoryMiB int) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var total int64
	found, inRAM := false, false
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		fields := strings.Fields(line)
		// A mapping header: "start-end perms offset dev inode [path]".
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			inRAM = false
			var start, end uint64
			if _, err := fmt.Sscanf(fields[0], "%x-%x", &start, &end); err == nil {
				inRAM = len(fields) == 5 && end-start >= uint64(memoryMiB)<<20
				found = found || inRAM
			}
			continue
		}
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok && inRAM {
			total += parseKB(b, rest)
		}
	}
	if err := s.Err(); err != nil {
		b.Fatal(err)
	}
	if !found {
		b.Fatalf("QEMU %d has no anonymous mapping of %d MiB or more (its guest RAM)", pid, memoryMiB)
	}
	return total
}

func parseKB(b *testing.B, field string) int64 {
	b.Helper()
	kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(field), " kB"), 10, 64)
	if err != nil {
		b.Fatalf("parse %q: %v", field, err)
	}
	return kb << 10
}

// waitGone waits until the processes have exited after their task was
// deleted; any left after 30 s are killed by PID and fail the benchmark.
func waitGone(b *testing.B, pids ...int) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				b.Errorf("process %d still runs 30 s after its task was deleted; killed it", pid)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

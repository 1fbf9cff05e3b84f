package task

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/config"
)

func anyOf(t *testing.T, v any) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestLoadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte("vcpus = 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		opts      *anypb.Any
		wantVCPUs int
		wantErr   string
	}{
		{name: "no options: defaults", wantVCPUs: 1},
		{name: "ConfigPath", opts: anyOf(t, &runtimeoptions.Options{ConfigPath: path}), wantVCPUs: 2},
		{name: "missing file", opts: anyOf(t, &runtimeoptions.Options{ConfigPath: path + ".missing"}), wantErr: "ConfigPath"},
		{name: "runc options", opts: anyOf(t, &runcoptions.Options{BinaryName: "runc"}), wantErr: "runtimeoptions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(&taskAPI.CreateTaskRequest{Options: tt.opts})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || c.VCPUs != tt.wantVCPUs {
				t.Fatalf("loadConfig = vcpus %d, %v; want %d", c.VCPUs, err, tt.wantVCPUs)
			}
		})
	}
}

func TestImageRef(t *testing.T) {
	t.Setenv(grpcAddressEnv, "")
	tests := []struct {
		name        string
		annotations map[string]string
		want        string
		wantErr     string
	}{
		{name: "cloak annotation first", annotations: map[string]string{AnnotationImage: "a:1", annotationCRIImage: "b:1"}, want: "a:1"},
		{name: "CRI annotation", annotations: map[string]string{annotationCRIImage: "b:1"}, want: "b:1"},
		{name: "nothing to go by", wantErr: AnnotationImage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := imageRef(context.Background(), "ns", "id", tt.annotations)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("imageRef = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestVMRunDirIsShortAndDistinct(t *testing.T) {
	cfg := config.Config{RunDir: "/run/cloak"}
	long := strings.Repeat("x", 200)
	a, b := vmRunDir(cfg, "k8s.io", long), vmRunDir(cfg, "k8s.io", long+"y")
	if a == b {
		t.Errorf("two ids share run dir %s", a)
	}
	if sock := filepath.Join(a, "agent.sock"); len(sock) > 60 {
		t.Errorf("socket path %s is %d bytes, want a short one", sock, len(sock))
	}
}

// startFake starts a process whose command line may name runDir's QMP
// socket, standing in for QEMU; exited is closed once it is reaped.
func startFake(t *testing.T, arg string) (cmd *exec.Cmd, exited chan struct{}) {
	t.Helper()
	cmd = exec.Command("sh", "-c", "sleep 60", arg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	return cmd, exited
}

func TestCleanupVM(t *testing.T) {
	tests := []struct {
		name     string
		namesVM  bool
		wantKill bool
		netns    string
	}{
		{name: "QEMU of this VM is killed", namesVM: true, wantKill: true},
		{name: "a reused pid is left alone", namesVM: false, wantKill: false},
		// CNI DEL removed the pod netns, and the TAPs with it.
		{name: "pod netns already gone", namesVM: true, wantKill: true, netns: "/nonexistent/netns/cni-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bundle, runDir := t.TempDir(), filepath.Join(t.TempDir(), "vm")
			if err := os.Mkdir(runDir, 0o700); err != nil {
				t.Fatal(err)
			}
			arg := "unrelated"
			if tt.namesVM {
				arg = filepath.Join(runDir, "qmp.sock")
			}
			fake, exited := startFake(t, arg)
			raw, _ := json.Marshal(vmState{QEMUPid: fake.Process.Pid, RunDir: runDir, NetNS: tt.netns})
			if err := os.WriteFile(filepath.Join(bundle, stateFile), raw, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := cleanupVM(bundle); err != nil {
				t.Fatal(err)
			}
			// A kill shows within moments, but a loaded CI machine can take
			// seconds to reap; leaving alone is only ever seen by waiting.
			wait := 2 * time.Second
			if tt.wantKill {
				wait = 15 * time.Second
			}
			select {
			case <-exited:
				if !tt.wantKill {
					t.Error("cleanup killed a process that is not this VM's QEMU")
				}
			case <-time.After(wait):
				if tt.wantKill {
					t.Error("cleanup left the VM's QEMU running")
				}
			}
			for _, p := range []string{runDir, filepath.Join(bundle, stateFile)} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Errorf("%s left behind", p)
				}
			}
		})
	}
	if err := cleanupVM(t.TempDir()); err != nil {
		t.Errorf("cleanup without a VM: %v", err)
	}
}

func TestProcessExitOnce(t *testing.T) {
	p := newProcess("c", "", 1, nil)
	p.setRunning()
	if !p.exit(3, time.Unix(1, 0)) {
		t.Fatal("first exit not recorded")
	}
	if p.exit(vmGoneStatus, time.Now()) {
		t.Error("second exit recorded: two exit events would be sent")
	}
	select {
	case <-p.done:
	default:
		t.Error("done not closed on exit")
	}
	if st := p.state(); st.status != apitask.Status_STOPPED || st.exitStatus != 3 {
		t.Errorf("state %+v, want STOPPED with status 3", st)
	}
}

func TestMetrics(t *testing.T) {
	m := metrics(&agentapi.StatsContainerResponse{
		CpuUsageNs: 3_000_000, CpuUserNs: 2_000_000, CpuSystemNs: 1_000_000,
		MemoryUsageBytes: 10, MemoryLimitBytes: 20, MemoryMaxUsageBytes: 15, PidsCurrent: 2, PidsLimit: 100,
	})
	if m.CPU.UsageUsec != 3000 || m.CPU.UserUsec != 2000 || m.CPU.SystemUsec != 1000 {
		t.Errorf("cpu %+v, want usec 3000/2000/1000", m.CPU)
	}
	if m.Memory.Usage != 10 || m.Memory.UsageLimit != 20 || m.Memory.MaxUsage != 15 || m.Pids.Current != 2 || m.Pids.Limit != 100 {
		t.Errorf("memory %+v pids %+v", m.Memory, m.Pids)
	}
	// containerd decodes the Any by its type URL.
	a := anyOf(t, m)
	if v, err := typeurl.UnmarshalAny(a); err != nil {
		t.Errorf("metrics do not round-trip through Any: %v", err)
	} else if _, ok := v.(*cgroupstats.Metrics); !ok {
		t.Errorf("metrics decode as %T", v)
	}
}

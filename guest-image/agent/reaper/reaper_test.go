package reaper

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// The test process is a child subreaper, standing in for PID 1: orphans
// started by the tests are reparented to it.
func TestMain(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

func waitExit(t *testing.T, ch <-chan runc.Exit) runc.Exit {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no exit status within 10s")
		return runc.Exit{}
	}
}

func TestMonitorStatuses(t *testing.T) {
	r := Default()
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{"success", "exit 0", 0},
		{"exit code", "exit 7", 7},
		{"signal", "kill -TERM $$", 128 + int(unix.SIGTERM)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("/bin/sh", "-c", tt.script)
			ec, err := r.Start(cmd)
			if err != nil {
				t.Fatal(err)
			}
			status, err := r.Wait(cmd, ec)
			if err != nil || status != tt.want {
				t.Fatalf("status %d err %v, want %d", status, err, tt.want)
			}
		})
	}
}

// TestMonitorOutput checks that output copied by exec.Cmd is complete when
// Wait returns, as go-runc reads it right after.
func TestMonitorOutput(t *testing.T) {
	r := Default()
	var out strings.Builder
	cmd := exec.Command("/bin/sh", "-c", "seq 1 20000")
	cmd.Stdout = &out
	ec, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(cmd, ec); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "\n20000\n") {
		t.Fatalf("output cut short: %d bytes", out.Len())
	}
}

// TestClaimOrphan is the runc case: an orphaned grandchild whose PID is
// learnt from its parent's output, possibly after it exited.
func TestClaimOrphan(t *testing.T) {
	r := Default()
	for _, delay := range []string{"0", "0.3"} {
		t.Run("sleep "+delay, func(t *testing.T) {
			w := r.Watch()
			cmd := exec.Command("/bin/sh", "-c", "(sleep "+delay+"; exit 42) & echo $!")
			var out strings.Builder
			cmd.Stdout = &out
			ec, err := r.Start(cmd)
			if err != nil {
				w.Close()
				t.Fatal(err)
			}
			if _, err := r.Wait(cmd, ec); err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
			if err != nil {
				t.Fatal(err)
			}
			if e := waitExit(t, w.Claim(pid)); e.Status != 42 || e.Pid != pid {
				t.Fatalf("orphan exit %+v, want pid %d status 42", e, pid)
			}
		})
	}
}

// TestUnknownReaped checks that exits nobody waits for leave no zombie.
func TestUnknownReaped(t *testing.T) {
	r := Default()
	cmd := exec.Command("/bin/sh", "-c", "sleep 0.1 & echo $!")
	var out strings.Builder
	cmd.Stdout = &out
	ec, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(cmd, ec); err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(out.String())
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			st, _ := os.ReadFile("/proc/" + pid + "/stat")
			t.Fatalf("orphan %s not reaped: %s", pid, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

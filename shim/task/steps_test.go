package task

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/shim/config"
)

// recordedSteps are n steps that log their runs and cleanups in order;
// step fail (1-based, 0: none) fails.
func recordedSteps(n, fail int, log *[]string) []startStep {
	steps := make([]startStep, n)
	for i := range steps {
		name := fmt.Sprintf("s%d", i+1)
		steps[i] = startStep{
			name: name,
			run: func(context.Context) error {
				*log = append(*log, "run "+name)
				if i+1 == fail {
					return errors.New(name + " failed")
				}
				return nil
			},
			cleanup: func(context.Context) error {
				*log = append(*log, "cleanup "+name)
				return nil
			},
		}
	}
	return steps
}

func TestRunStepsUndoesInReverse(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	for fail := 1; fail <= 4; fail++ {
		t.Run(fmt.Sprintf("step %d fails", fail), func(t *testing.T) {
			var log []string
			undo, err := runSteps(context.Background(), recordedSteps(4, fail, &log), logger)
			if err == nil || err.Error() != fmt.Sprintf("s%d failed", fail) || undo != nil {
				t.Fatalf("runSteps = %d cleanups, %v; want none and step %d's error", len(undo), err, fail)
			}
			var want []string
			for i := 1; i <= fail; i++ {
				want = append(want, fmt.Sprintf("run s%d", i))
			}
			// Not the failing step's own cleanup: its run undoes itself.
			for i := fail - 1; i >= 1; i-- {
				want = append(want, fmt.Sprintf("cleanup s%d", i))
			}
			if !slices.Equal(log, want) {
				t.Errorf("ran %q, want %q", log, want)
			}
		})
	}
	t.Run("all succeed", func(t *testing.T) {
		var log []string
		undo, err := runSteps(context.Background(), recordedSteps(3, 0, &log), logger)
		if err != nil || len(undo) != 3 {
			t.Fatalf("runSteps = %d cleanups, %v; want 3", len(undo), err)
		}
		if want := []string{"run s1", "run s2", "run s3"}; !slices.Equal(log, want) {
			t.Fatalf("ran %q, want %q (no cleanup before the VM stops)", log, want)
		}
		log = nil
		if err := runCleanups(context.Background(), undo); err != nil {
			t.Fatal(err)
		}
		if want := []string{"cleanup s3", "cleanup s2", "cleanup s1"}; !slices.Equal(log, want) {
			t.Errorf("stop ran %q, want %q", log, want)
		}
	})
}

// A failing cleanup does not keep the ones before it from running, and
// its error is reported; cleanups get a context that outlives a canceled
// start but has a deadline.
func TestRunCleanupsRunsAll(t *testing.T) {
	var ran []int
	var deadlines int
	mk := func(i int, err error) func(context.Context) error {
		return func(ctx context.Context) error {
			ran = append(ran, i)
			if _, ok := ctx.Deadline(); ok && ctx.Err() == nil {
				deadlines++
			}
			return err
		}
	}
	boom := errors.New("boom")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	steps := []startStep{
		{name: "a", run: func(context.Context) error { return nil }, cleanup: mk(1, nil)},
		{name: "b", run: func(context.Context) error { return nil }, cleanup: mk(2, boom)},
		{name: "c", run: func(context.Context) error { return nil }},
		{name: "d", run: func(ctx context.Context) error { return ctx.Err() }, cleanup: mk(4, nil)},
	}
	var mark time.Time
	steps[0].mark = &mark
	_, err := runSteps(ctx, steps, slog.New(slog.DiscardHandler))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want the failing step's", err)
	}
	if !slices.Equal(ran, []int{2, 1}) || deadlines != 2 {
		t.Errorf("cleanups ran %v (%d with a live deadline), want [2 1], both with one", ran, deadlines)
	}
	if mark.IsZero() {
		t.Error("the first step's timeline mark was not set")
	}
	ran = nil
	if err := runCleanups(context.Background(), []func(context.Context) error{mk(1, nil), mk(2, boom), mk(3, nil)}); !errors.Is(err, boom) {
		t.Errorf("runCleanups = %v, want boom", err)
	}
	if !slices.Equal(ran, []int{3, 2, 1}) {
		t.Errorf("ran %v, want [3 2 1]", ran)
	}
}

// The VM's start keeps the pod start timeline's marks: each is set by the
// step that ends there, in step order.
func TestSandboxStepsMarkTheTimeline(t *testing.T) {
	st := &sandboxStart{sb: &sandbox{}}
	steps := st.steps()
	marks := map[string]*time.Time{}
	var names []string
	for _, s := range steps {
		names = append(names, s.name)
		if s.mark != nil {
			marks[s.name] = s.mark
		}
	}
	want := map[string]*time.Time{"qemu": &st.sb.times.qemuStarted, "agent": &st.sb.times.agentReady, "create sandbox": &st.sb.times.ready}
	if len(marks) != len(want) {
		t.Fatalf("marks %v, want %v", marks, want)
	}
	for n, p := range want {
		if marks[n] != p {
			t.Errorf("step %q marks %p, want %p", n, marks[n], p)
		}
	}
	if i, j, k := slices.Index(names, "qemu"), slices.Index(names, "agent"), slices.Index(names, "create sandbox"); !(i < j && j < k) {
		t.Errorf("steps %q: qemu, agent, create sandbox out of order", names)
	}
	if slices.Index(names, "pod network") > slices.Index(names, "qemu") {
		t.Errorf("steps %q: the TAPs must exist before QEMU starts", names)
	}
}

// The real start's steps, run up to a QEMU that cannot be found: the
// error is the launcher's, and the steps before it are undone (the vTPM
// state made for this VM is removed).
func TestStartSandboxFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	imageDir := filepath.Join(dir, "image")
	if err := os.Mkdir(imageDir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{RunDir: filepath.Join(dir, "run"), ImageDir: imageDir, ConsoleLogDir: filepath.Join(dir, "console"),
		Kernel: filepath.Join(imageDir, "vmlinuz"), RootDisk: filepath.Join(imageDir, "root.img"),
		VTPM: true, VTPMStateDir: filepath.Join(dir, "vtpm")}.WithDefaults()
	spec := sandboxSpec{cfg: cfg, settings: vmSettings{vcpus: 1, memoryMiB: 256}, ns: "test", id: "t1", bundle: dir, hostname: "t1", logger: slog.New(slog.DiscardHandler)}

	// No manifest: the image was never built.
	if _, err := startSandbox(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "make image") {
		t.Fatalf("startSandbox without an image = %v, want the error naming `make image`", err)
	}
	if _, err := os.Stat(cfg.ConsoleLogDir); err != nil {
		t.Errorf("the console log step did not run: %v", err)
	}

	if err := os.WriteFile(filepath.Join(imageDir, "manifest.json"), []byte(`{"cmdline":"console=hvc0"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{cfg.Kernel, cfg.RootDisk} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	vtpm := vtpmFor(cfg, "test", "t1").StateDir
	if err := os.MkdirAll(vtpm, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir()) // no qemu-system-x86_64
	if _, err := startSandbox(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "find qemu") {
		t.Fatalf("startSandbox without QEMU = %v, want the launcher's error", err)
	}
	if _, err := os.Stat(vtpm); !os.IsNotExist(err) {
		t.Errorf("vTPM state %s left behind by a failed start (%v)", vtpm, err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); !os.IsNotExist(err) {
		t.Errorf("a VM state file was written for a VM that never started (%v)", err)
	}
}

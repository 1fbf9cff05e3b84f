package testutil

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	t.Run("met after a few attempts", func(t *testing.T) {
		n := 0
		err := Poll(context.Background(), time.Millisecond, func() (bool, error) { n++; return n == 3, nil })
		if err != nil || n != 3 {
			t.Fatalf("Poll = %v after %d calls, want nil after 3", err, n)
		}
	})
	t.Run("cond error is final", func(t *testing.T) {
		boom := errors.New("boom")
		n := 0
		err := Poll(context.Background(), time.Millisecond, func() (bool, error) { n++; return false, boom })
		if !errors.Is(err, boom) || n != 1 {
			t.Fatalf("Poll = %v after %d calls, want boom after 1", err, n)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := Poll(ctx, 5*time.Millisecond, func() (bool, error) { return false, nil })
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "attempts") {
			t.Fatalf("Poll = %v, want a deadline error counting attempts", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Poll returned after %v, want soon after the 30ms deadline", took)
		}
	})
}

// fakeTB records Fatalf instead of ending the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = format
}

func TestEventually(t *testing.T) {
	ok := &fakeTB{TB: t}
	n := 0
	Eventually(ok, time.Second, "third call", func() bool { n++; return n == 3 })
	if ok.failed != "" || n != 3 {
		t.Errorf("Eventually failed (%q) after %d calls, want success after 3", ok.failed, n)
	}
	never := &fakeTB{TB: t}
	Eventually(never, 20*time.Millisecond, "never", func() bool { return false })
	if never.failed == "" {
		t.Error("Eventually did not fail on a condition that never holds")
	}
}

package testutil

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Poll calls cond at once and then every interval until it reports true
// (nil), returns an error (that error), or ctx ends (ctx's error, with the
// number of attempts). cond's error is final; a condition that is merely
// not met yet returns false, nil.
func Poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for attempts := 1; ; attempts++ {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met after %d attempts: %w", attempts, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// Eventually fails the test unless cond reports true within timeout,
// checking every 10 ms; what says what was awaited ("socket is up").
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := Poll(ctx, 10*time.Millisecond, func() (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("%s: not within %v (%v)", what, timeout, err)
	}
}

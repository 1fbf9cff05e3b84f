package task

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// cleanupTimeout bounds a VM's teardown: QEMU's power-off and what follows.
const cleanupTimeout = 15 * time.Second

// startStep is one named step of a VM's start. run does it and undoes its
// own partial work when it fails; cleanup (nil: nothing to undo) undoes a
// step that succeeded, when a later step fails or when the VM stops. mark
// (nil: none) receives the time the step ended, for the pod start timeline.
type startStep struct {
	name    string
	run     func(ctx context.Context) error
	cleanup func(ctx context.Context) error
	mark    *time.Time
}

// runSteps runs steps in order. When one fails, the cleanups of the steps
// before it run in reverse (runCleanups) and its error is returned. On
// success it returns the cleanups of all steps, in step order, for
// runCleanups when the VM stops.
func runSteps(ctx context.Context, steps []startStep, logger *slog.Logger) ([]func(context.Context) error, error) {
	var undo []func(context.Context) error
	for _, st := range steps {
		began := time.Now()
		if err := st.run(ctx); err != nil {
			logger.Debug("VM start step failed", "step", st.name, "duration", time.Since(began), "error", err)
			if cerr := runCleanups(context.WithoutCancel(ctx), undo); cerr != nil {
				logger.Warn("clean up after a failed VM start", "step", st.name, "error", cerr)
			}
			return nil, err
		}
		ended := time.Now()
		if st.mark != nil {
			*st.mark = ended
		}
		logger.Debug("VM start step done", "step", st.name, "duration", ended.Sub(began))
		if st.cleanup != nil {
			undo = append(undo, st.cleanup)
		}
	}
	return undo, nil
}

// runCleanups runs cleanups (in step order) last step first: each one runs
// while what the steps before it made still exists. Every cleanup runs,
// whatever the others return.
func runCleanups(ctx context.Context, ran []func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	var errs []error
	for i := len(ran) - 1; i >= 0; i-- {
		errs = append(errs, ran[i](ctx))
	}
	return errors.Join(errs...)
}

package task

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/fifo"
	"github.com/containerd/log"

	"github.com/cloak-containers/cloak/shim/agent"
)

// stdio connects one process's containerd FIFOs to its agent ProcessIO
// stream. Paths may be empty (that stream is not wanted).
type stdio struct {
	stdinPath, stdoutPath, stderrPath string
	terminal                          bool

	stdin io.ReadWriteCloser
	// stdinHold is our own write end of the stdin FIFO: it keeps the reader
	// from seeing EOF when a client detaches, and closing it (CloseIO) ends
	// stdin only after the bytes already in the FIFO were read.
	stdinHold      io.Closer
	stdout, stderr io.WriteCloser
	closeStdinOnce sync.Once
	// done is closed once the agent has delivered the last output byte and
	// the FIFOs are closed: the exit event waits for it, so a client that
	// stops reading at exit has all of the output.
	done chan struct{}
}

// openStdio opens the FIFOs containerd created. The output FIFOs are opened
// blocking: the client opened their read side before asking for the task.
func openStdio(ctx context.Context, stdinPath, stdoutPath, stderrPath string, terminal bool) (_ *stdio, retErr error) {
	s := &stdio{stdinPath: stdinPath, stdoutPath: stdoutPath, stderrPath: stderrPath, terminal: terminal, done: make(chan struct{})}
	defer func() {
		if retErr != nil {
			s.closeAll()
		}
	}()
	var err error
	if stdinPath != "" {
		// Non-blocking: the client may open its write side only later
		// (or never, for a detached task); reads wait for it.
		if s.stdin, err = fifo.OpenFifo(context.Background(), stdinPath, syscall.O_RDONLY|syscall.O_NONBLOCK, 0); err != nil {
			return nil, fmt.Errorf("open stdin fifo: %w", err)
		}
		if s.stdinHold, err = fifo.OpenFifo(context.Background(), stdinPath, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err != nil {
			return nil, fmt.Errorf("open stdin fifo: %w", err)
		}
	}
	if stdoutPath != "" {
		if s.stdout, err = fifo.OpenFifo(ctx, stdoutPath, syscall.O_WRONLY, 0); err != nil {
			return nil, fmt.Errorf("open stdout fifo: %w", err)
		}
	}
	// A TTY has one output stream: the agent sends everything as stdout.
	if stderrPath != "" && !terminal {
		if s.stderr, err = fifo.OpenFifo(ctx, stderrPath, syscall.O_WRONLY, 0); err != nil {
			return nil, fmt.Errorf("open stderr fifo: %w", err)
		}
	}
	return s, nil
}

// copy runs the agent attachment until both output streams end. Attach
// before the process starts so no output is lost.
func (s *stdio) copy(ctx context.Context, c *agent.Client, containerID, execID string) {
	defer close(s.done)
	defer s.closeAll()
	var in io.Reader
	counted := &countingReader{}
	if s.stdin != nil {
		counted.r = s.stdin
		in = counted
	}
	// nil writers are discarded by Attach; typed nil interfaces are not nil.
	var out, errOut io.Writer
	if s.stdout != nil {
		out = s.stdout
	}
	if s.stderr != nil {
		errOut = s.stderr
	}
	if err := c.Attach(ctx, containerID, execID, in, out, errOut); err != nil {
		log.G(ctx).WithError(err).WithField("exec", execID).Warn("process stdio ended with an error")
	}
	log.G(ctx).WithField("container", containerID).WithField("exec", execID).WithField("stdin_bytes", counted.n.Load()).Debug("process stdio done")
}

// countingReader counts stdin bytes for the debug log.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// closeStdin drops our hold on the stdin FIFO: once the client's bytes are
// read, the attachment's stdin copy sees EOF and closes the process's stdin
// in the guest.
func (s *stdio) closeStdin() {
	s.closeStdinOnce.Do(func() {
		if s.stdinHold != nil {
			s.stdinHold.Close()
		}
	})
}

func (s *stdio) closeAll() {
	s.closeStdin()
	if s.stdin != nil {
		s.stdin.Close()
	}
	for _, w := range []io.WriteCloser{s.stdout, s.stderr} {
		if w != nil {
			w.Close()
		}
	}
}

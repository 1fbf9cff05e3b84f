// Package reaper collects the exit status of every child of the agent. The
// agent is PID 1 of the guest, so container init processes (double-forked by
// runc) are reparented to it and only a wait on "any child" sees them exit.
// One SIGCHLD loop calls wait4(-1, WNOHANG) and hands each status to whoever
// waits for that PID; statuses nobody claims are dropped, so zombies never
// pile up. The Reaper is also go-runc's ProcessMonitor, so the runc commands
// the agent runs are waited for here and not by os/exec, which would race
// with wait4(-1).
//
// Every child process of the agent must be started through the Reaper
// (Start/Wait); an exec.Cmd waited for on its own may lose its status to the
// loop and see ECHILD.
package reaper

import (
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// maxWatchBacklog bounds how many exits one Watch records: a watch lives for
// one runc call, far fewer exits than this happen meanwhile.
const maxWatchBacklog = 4096

// Reaper dispatches child exits by PID. It implements runc.ProcessMonitor.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan runc.Exit
	watches map[*Watch]struct{}
}

var (
	defaultOnce sync.Once
	defaultR    *Reaper
)

// Default returns the process-wide Reaper, starting its SIGCHLD loop on the
// first call: there is one SIGCHLD and one set of children per process.
func Default() *Reaper {
	defaultOnce.Do(func() {
		defaultR = newReaper()
		sigs := make(chan os.Signal, 128)
		signal.Notify(sigs, unix.SIGCHLD)
		go func() {
			for range sigs {
				defaultR.reap()
			}
		}()
		// Children that exited before Notify was installed sent their
		// SIGCHLD into the void; collect them now.
		defaultR.reap()
	})
	return defaultR
}

func newReaper() *Reaper {
	return &Reaper{waiters: map[int]chan runc.Exit{}, watches: map[*Watch]struct{}{}}
}

// reap collects every exited child. SIGCHLD is not queued: one signal may
// stand for many exits, so loop until no child is left to collect.
func (r *Reaper) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.dispatch(runc.Exit{Timestamp: time.Now(), Pid: pid, Status: ExitStatus(ws)})
	}
}

// ExitStatus is the shell convention: the exit code, or 128+signal for a
// process killed by a signal.
func ExitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

func (r *Reaper) dispatch(e runc.Exit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch, ok := r.waiters[e.Pid]; ok {
		delete(r.waiters, e.Pid)
		ch <- e // buffered, one exit per PID
		close(ch)
		return
	}
	for w := range r.watches {
		if len(w.exits) < maxWatchBacklog {
			w.exits = append(w.exits, e)
		}
	}
}

// Start starts c and registers its PID before the loop can collect it: the
// lock is held across fork and registration, and dispatch takes it too.
func (r *Reaper) Start(c *exec.Cmd) (chan runc.Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := c.Start(); err != nil {
		return nil, err
	}
	ch := make(chan runc.Exit, 1)
	r.waiters[c.Process.Pid] = ch
	return ch, nil
}

// StartLocked is Start on a goroutine locked to its OS thread until c exits,
// for commands with a parent-death signal (tied to the starting thread).
func (r *Reaper) StartLocked(c *exec.Cmd) (chan runc.Exit, error) {
	type started struct {
		ch  chan runc.Exit
		err error
	}
	res := make(chan started)
	out := make(chan runc.Exit, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ch, err := r.Start(c)
		res <- started{ch, err}
		if err != nil {
			return
		}
		e := <-ch
		out <- e
		close(out)
	}()
	s := <-res
	if s.err != nil {
		return nil, s.err
	}
	return out, nil
}

// Wait returns c's exit status once the loop collected it, then lets
// exec.Cmd finish copying c's output (its own wait reports ECHILD, which is
// expected: the status was taken here).
func (r *Reaper) Wait(c *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	_ = c.Wait()
	return e.Status, nil
}

// Watch records every unclaimed exit from now on, for processes whose PID is
// learnt only after they may have exited (runc writes the container's PID to
// a file; a short-lived exec can be gone before the file is read).
type Watch struct {
	r     *Reaper
	exits []runc.Exit // guarded by r.mu
}

// Watch starts recording exits. Call Claim or Close to end the watch.
func (r *Reaper) Watch() *Watch {
	w := &Watch{r: r}
	r.mu.Lock()
	r.watches[w] = struct{}{}
	r.mu.Unlock()
	return w
}

// Claim ends the watch and returns a channel that yields pid's exit: at once
// if it happened during the watch, else when the loop collects it.
func (w *Watch) Claim(pid int) <-chan runc.Exit {
	r := w.r
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.watches, w)
	ch := make(chan runc.Exit, 1)
	for _, e := range w.exits {
		if e.Pid == pid {
			ch <- e
			close(ch)
			return ch
		}
	}
	r.waiters[pid] = ch
	return ch
}

// Close ends the watch without claiming a PID.
func (w *Watch) Close() {
	w.r.mu.Lock()
	delete(w.r.watches, w)
	w.r.mu.Unlock()
}

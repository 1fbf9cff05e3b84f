package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// oomBacklog is how many OOM events a slow subscriber may fall behind
// before events are dropped for it (and the drop is logged).
const oomBacklog = 64

// oomHub fans OOM events out to every OOMEvents stream.
type oomHub struct {
	mu   sync.Mutex
	subs map[chan *agentapi.OOMEvent]struct{}
}

func (h *oomHub) subscribe() chan *agentapi.OOMEvent {
	ch := make(chan *agentapi.OOMEvent, oomBacklog)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch
}

func (h *oomHub) unsubscribe(ch chan *agentapi.OOMEvent) {
	h.mu.Lock()
	delete(h.subs, ch)
	h.mu.Unlock()
}

// publish never blocks: a stuck host stream must not stall the watchers.
func (h *oomHub) publish(ev *agentapi.OOMEvent) (dropped int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- ev:
		default:
			dropped++
		}
	}
	return dropped
}

// watchOOM reports a container's OOM kills until ctx ends or the container
// is gone. On cgroup v2 (the guest's) it follows the cgroup's memory.events
// with inotify, as containerd's own runc shim does; that costs nothing per
// container. `runc events`, the fallback
// for cgroup v1, is a long-lived runc process per container: under TCG its
// start alone competed with the container's for the guest's one vCPU, and it
// held guest memory for the container's life.
func (s *Server) watchOOM(ctx context.Context, c *container) {
	if _, ok := oomKills(c.cgroupDir); ok {
		s.watchOOMCgroup2(ctx, c)
		return
	}
	// Stats are not wanted here; the interval only sets how often runc
	// would send them.
	events, err := c.runc.Events(ctx, c.id, time.Hour)
	if err != nil {
		s.log.Warn("OOM events unavailable", "container", c.id, "err", err)
		return
	}
	for ev := range events {
		switch ev.Type {
		case "oom":
			s.noteOOM(c, true)
		case "error":
			// go-runc's decoder keeps failing after a bad line; stop
			// following this container rather than spin.
			s.log.Warn("OOM events stopped", "container", c.id, "err", ev.Err)
			return
		}
	}
}

// watchOOMCgroup2 follows memory.events of the container's cgroup with
// inotify: the kernel marks the file modified on every change of its
// counters, and the watch ends (IN_IGNORED) when the cgroup is removed.
// containerd's cgroup2.Manager.EventChan does the same, but its package
// links cilium/ebpf and D-Bus into the guest's PID 1, so these few lines are
// written here.
func (s *Server) watchOOMCgroup2(ctx context.Context, c *container) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		s.log.Warn("OOM events unavailable", "container", c.id, "err", err)
		return
	}
	// The runtime poller makes Read block this goroutine only, and Close
	// (when ctx ends) wakes it.
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	if _, err := unix.InotifyAddWatch(fd, filepath.Join(c.cgroupDir, "memory.events"), unix.IN_MODIFY); err != nil {
		s.log.Warn("OOM events unavailable", "container", c.id, "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	// A kill between the container's start and the watch is counted now.
	s.noteOOM(c, false)
	buf := make([]byte, 16*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := f.Read(buf)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("OOM events stopped", "container", c.id, "err", err)
			}
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&unix.IN_IGNORED != 0 {
				return // the cgroup is gone
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		s.noteOOM(c, false)
	}
}

// noteOOM publishes the container's OOM kills not reported yet. With
// cgroup v2 the count comes from memory.events (oom_kill), so a kill is
// reported once whether runc's event stream or the init exit noticed it
// first; without that file (cgroup v1) runc's event is trusted as one kill.
func (s *Server) noteOOM(c *container, fromRunc bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fresh := 0
	if n, ok := oomKills(c.cgroupDir); ok {
		fresh = n - c.oomReported
	} else if fromRunc {
		fresh = 1
	}
	for range fresh {
		if dropped := s.oom.publish(&agentapi.OOMEvent{ContainerId: c.id, AtUnixNano: time.Now().UnixNano()}); dropped > 0 {
			s.log.Warn("OOM event dropped for slow subscribers", "container", c.id, "subscribers", dropped)
		}
		s.log.Warn("container OOM kill", "container", c.id)
	}
	if fresh > 0 {
		c.oomReported += fresh
	}
}

// oomKills reads the oom_kill counter of a cgroup v2 memory.events file.
func oomKills(cgroupDir string) (int, bool) {
	if cgroupDir == "" {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(cgroupDir, "memory.events"))
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

// OOMEvents streams every OOM kill in any container until the host hangs up.
func (s *Server) OOMEvents(_ *agentapi.OOMEventsRequest, stream agentapi.AgentService_OOMEventsServer) error {
	ch := s.oom.subscribe()
	defer s.oom.unsubscribe(ch)
	for {
		select {
		case ev := <-ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

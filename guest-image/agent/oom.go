package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloak-containers/cloak/agentapi"
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

// watchOOM follows `runc events` for a container (it reports OOM kills from
// cgroup v1 and v2 alike) until ctx ends or the container is gone.
func (s *Server) watchOOM(ctx context.Context, c *container) {
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

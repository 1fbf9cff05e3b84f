package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/agentapi"
)

func TestParseMeminfo(t *testing.T) {
	total, avail, err := parseMeminfo([]byte("MemTotal:        1012345 kB\nMemFree:  1 kB\nMemAvailable:     512000 kB\n"))
	if err != nil || total != 1012345<<10 || avail != 512000<<10 {
		t.Fatalf("got %d %d %v", total, avail, err)
	}
	if _, _, err := parseMeminfo([]byte("MemFree: 1 kB\n")); err == nil {
		t.Error("no MemTotal: want error")
	}
	if _, _, err := parseMeminfo([]byte("MemTotal: lots kB\n")); err == nil {
		t.Error("bad number: want error")
	}
}

func TestGuestStats(t *testing.T) {
	s := New(Config{})
	st, err := s.GuestStats(context.Background(), &agentapi.GuestStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.MemTotalBytes == 0 || st.MemAvailableBytes == 0 || st.MemAvailableBytes > st.MemTotalBytes || st.Cpus == 0 || st.UptimeNs <= 0 {
		t.Fatalf("implausible stats %+v", st)
	}
}

func TestOOMKills(t *testing.T) {
	dir := t.TempDir()
	if _, ok := oomKills(dir); ok {
		t.Error("no memory.events: want not ok")
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, ok := oomKills(dir); !ok || n != 2 {
		t.Errorf("oomKills = %d %v, want 2", n, ok)
	}
	if _, ok := oomKills(""); ok {
		t.Error("empty dir: want not ok")
	}
}

// The cgroup v2 watcher publishes each new oom_kill as the counter grows,
// and ends when memory.events goes away with its cgroup.
func TestWatchOOMCgroup2(t *testing.T) {
	dir := t.TempDir()
	events := filepath.Join(dir, "memory.events")
	write := func(kills string) {
		t.Helper()
		if err := os.WriteFile(events, []byte("low 0\nhigh 0\nmax 0\noom 0\noom_kill "+kills+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1") // a kill before the watch starts
	s := New(Config{})
	sub := s.oom.subscribe()
	defer s.oom.unsubscribe(sub)
	c := &container{id: "c1", cgroupDir: dir}
	done := make(chan struct{})
	go func() {
		s.watchOOM(context.Background(), c)
		close(done)
	}()
	expect := func(n int) {
		t.Helper()
		for range n {
			select {
			case ev := <-sub:
				if ev.ContainerId != "c1" {
					t.Fatalf("event for %q, want c1", ev.ContainerId)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no OOM event within 10 s")
			}
		}
	}
	expect(1)
	write("3")
	expect(2)
	select {
	case ev := <-sub:
		t.Fatalf("extra event %v: each kill is reported once", ev)
	case <-time.After(200 * time.Millisecond):
	}
	if err := os.Remove(events); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watcher still running after memory.events was removed")
	}
}

// Cancelling the watch (the container is removed) ends it too.
func TestWatchOOMCgroup2Cancel(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte("oom_kill 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.watchOOM(ctx, &container{id: "c1", cgroupDir: dir})
		close(done)
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watcher still running after its context ended")
	}
}

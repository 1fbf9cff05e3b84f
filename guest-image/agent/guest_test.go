package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloak-containers/cloak/agentapi"
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

package agent

import (
	"context"
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

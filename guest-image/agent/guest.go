package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// GuestStats reads /proc/meminfo and /proc/uptime.
func (s *Server) GuestStats(context.Context, *agentapi.GuestStatsRequest) (*agentapi.GuestStatsResponse, error) {
	mem, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "read /proc/meminfo: %v", err)
	}
	total, avail, err := parseMeminfo(mem)
	if err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "%v", err)
	}
	resp := &agentapi.GuestStatsResponse{MemTotalBytes: total, MemAvailableBytes: avail, Cpus: uint32(runtime.NumCPU())}
	if up, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(up)); len(f) > 0 {
			if secs, err := strconv.ParseFloat(f[0], 64); err == nil {
				resp.UptimeNs = int64(secs * float64(time.Second))
			}
		}
	}
	return resp, nil
}

// parseMeminfo returns MemTotal and MemAvailable in bytes.
func parseMeminfo(b []byte) (total, avail uint64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "MemTotal" && key != "MemAvailable") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/meminfo %s: %v", key, err)
		}
		if key == "MemTotal" {
			total = kb << 10
		} else {
			avail = kb << 10
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("/proc/meminfo has no MemTotal")
	}
	return total, avail, nil
}

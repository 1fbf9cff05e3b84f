package qemu

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// fakeAgent answers one hello on the agent end of a pipe with reply(token).
func fakeAgent(t *testing.T, conn net.Conn, reply func(token string) string) {
	go func() {
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return
		}
		token, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), agentapi.SerialHello+" ")
		if !ok {
			t.Errorf("hello line %q", line)
			return
		}
		if r := reply(token); r != "" {
			_, _ = conn.Write([]byte(r))
		}
	}()
}

func TestSerialHandshake(t *testing.T) {
	tests := []struct {
		name    string
		reply   func(token string) string
		wantErr string
	}{
		{"welcome", func(tok string) string { return agentapi.SerialWelcome + " " + tok + "\n" }, ""},
		{"stale token", func(string) string { return agentapi.SerialWelcome + " 00\n" }, "unexpected welcome"},
		{"garbage", func(string) string { return "\x00\x00\x06\x04garbage\n" }, "unexpected welcome"},
		{"silence", func(string) string { return "" }, "no welcome"},
		{"endless line", func(string) string { return strings.Repeat("x", 2*agentapi.SerialHelloMax) }, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, guest := net.Pipe()
			defer host.Close()
			defer guest.Close()
			fakeAgent(t, guest, tt.reply)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			err := serialHandshake(ctx, host)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("handshake error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

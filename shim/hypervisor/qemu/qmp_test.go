package qemu

import (
	"strconv"
	"strings"
	"testing"
)

func TestDecodeReplies(t *testing.T) {
	tests := []struct {
		name    string
		reply   string
		decode  string // "status" or "cpus"
		want    string // the state, or the count in decimal
		wantErr string
	}{
		{"status", `{"return": {"status": "running", "running": true}}`, "status", "running", ""},
		{"cpus", `{"return": [{"cpu-index": 0, "target": "x86_64"}, {"cpu-index": 1}]}`, "cpus", "2", ""},
		{"no cpus", `{"return": []}`, "cpus", "0", ""},
		{"error reply", `{"error": {"class": "GenericError", "desc": ""}}`, "status", "", "no return value"},
		{"not json", `running`, "status", "", "decode reply"},
		{"too big", `{"return": "` + strings.Repeat("a", maxQMPReply) + `"}`, "status", "", "over the"},
		{"empty status", `{"return": {"status": ""}}`, "status", "", "status is empty"},
		{"status not an object", `{"return": "running"}`, "status", "", "decode status"},
		{"cpus not a list", `{"return": {"cpu-index": 0}}`, "cpus", "", "decode cpus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			ret, err := decodeReturn([]byte(tt.reply))
			if err == nil && tt.decode == "status" {
				got, err = decodeStatus(ret)
			} else if err == nil {
				var n int
				n, err = decodeCPUs(ret)
				got = strconv.Itoa(n)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// FuzzDecodeReply feeds QMP replies, which come from an untrusted QEMU, to
// the decoders: they must never panic, and a decoded count or state must be
// consistent.
func FuzzDecodeReply(f *testing.F) {
	for _, s := range []string{
		`{"return": {"status": "running", "running": true}}`,
		`{"return": [{"cpu-index": 0}, {"cpu-index": 1}]}`,
		`{"return": {}}`,
		`{"error": {"class": "GenericError", "desc": "x"}}`,
		`{"return": null}`,
		`{"return": [null, 1]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		ret, err := decodeReturn(reply)
		if err != nil {
			return
		}
		if s, err := decodeStatus(ret); err == nil && s == "" {
			t.Errorf("decodeStatus returned an empty state without error")
		}
		if n, err := decodeCPUs(ret); err == nil && n < 0 {
			t.Errorf("decodeCPUs returned %d", n)
		}
	})
}

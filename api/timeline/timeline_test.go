package timeline

import (
	"testing"
	"time"
)

// The line's time format keeps nanoseconds and reads back to the same
// instant, whatever the writer's zone: the reader subtracts these times.
func TestTimeRoundTrip(t *testing.T) {
	in := time.Date(2026, 12, 6, 21, 50, 1, 123456789, time.FixedZone("x", 3600))
	s := FormatTime(in)
	if s != "2026-12-06T20:50:01.123456789Z" {
		t.Fatalf("FormatTime = %q", s)
	}
	out, err := ParseTime(s)
	if err != nil || !out.Equal(in) {
		t.Fatalf("ParseTime(%q) = %v, %v; want %v", s, out, err, in)
	}
	if _, err := ParseTime("yesterday"); err == nil {
		t.Error("a non-time was read")
	}
	if Microseconds(1999) != 1 {
		t.Errorf("Microseconds(1999) = %d, want 1 (truncated)", Microseconds(1999))
	}
}

package kbstypes

import "testing"

func TestSafeText(t *testing.T) {
	if got := SafeText("ok \x1b[2Jx\x07\xff\u0085é"); got != "ok  [2Jx ? é" {
		t.Errorf("SafeText = %q", got)
	}
}

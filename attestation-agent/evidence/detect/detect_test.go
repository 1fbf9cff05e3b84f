package detect

import (
	"slices"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

func TestNew(t *testing.T) {
	tests := []struct {
		tee     string
		wantErr string
	}{
		{kbstypes.TeeSample, ""},
		{"tdx-typo", `unknown TEE "tdx-typo": this agent supports`},
		// This machine is no SNP guest: the error says what was looked for.
		{kbstypes.TeeSNP, "no SEV-SNP report source"},
		{kbstypes.TeeTDX, "no TDX quote source"},
		{"", `unknown TEE ""`},
	}
	for _, tc := range tests {
		p, err := New(tc.tee, Options{})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New(%q) error = %v, want containing %q", tc.tee, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("New(%q): %v", tc.tee, err)
		}
		if p.Tee() != tc.tee {
			t.Errorf("New(%q).Tee() = %q", tc.tee, p.Tee())
		}
	}
}

// TestDetect: auto picks the first provider of AutoOrder this machine can
// open and gives the reason for every one it passed over, in order.
func TestDetect(t *testing.T) {
	p, skipped, err := Detect(Options{})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.Index(AutoOrder, p.Tee())
	if i < 0 || len(skipped) != i {
		t.Fatalf("detected %s after skipping %v; want the first openable of %v", p.Tee(), skipped, AutoOrder)
	}
	for j, s := range skipped {
		if !strings.HasPrefix(s, AutoOrder[j]+": ") {
			t.Errorf("skip reason %q does not name %s", s, AutoOrder[j])
		}
	}
	q, err := New(Auto, Options{})
	if err != nil || q.Tee() != p.Tee() {
		t.Errorf("New(auto) = %v, %v; want %s", q, err, p.Tee())
	}
	if !slices.Contains(Names(), Auto) {
		t.Errorf("Names() = %v lacks %q", Names(), Auto)
	}
}

package detect

import (
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/kbstypes"
)

func TestNew(t *testing.T) {
	tests := []struct {
		tee     string
		wantErr string
	}{
		{kbstypes.TeeSample, ""},
		{"snp", `unknown TEE "snp": this agent supports sample`},
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

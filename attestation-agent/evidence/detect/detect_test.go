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
		{"tdx-typo", `unknown TEE "tdx-typo": this agent supports`},
		// This machine is no SNP guest: the error says what was looked for.
		{kbstypes.TeeSNP, "no SEV-SNP report source"},
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

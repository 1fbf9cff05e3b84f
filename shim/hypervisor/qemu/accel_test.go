package qemu

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestProbeKVM(t *testing.T) {
	dir := t.TempDir()
	pvm := filepath.Join(dir, "kvm_pvm")
	if err := os.Mkdir(pvm, 0o755); err != nil {
		t.Fatal(err)
	}
	notKVM := filepath.Join(dir, "kvm")
	if err := os.WriteFile(notKVM, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	absent := filepath.Join(dir, "absent")
	tests := []struct {
		name, dev, module, want string
	}{
		{"pvm loaded", notKVM, pvm, "PVM"},
		{"no /dev/kvm", absent, absent, "open " + absent},
		{"not a kvm device", notKVM, absent, "KVM_GET_API_VERSION"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := probeKVM(tt.dev, tt.module)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("probeKVM = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestResolveAccel(t *testing.T) {
	usable := func() error { return nil }
	pvm := func() error { return errors.New("host KVM is PVM") }
	tests := []struct {
		name    string
		accel   Accel
		tee     TEEKind
		probe   KVMProbe
		want    Accel
		wantErr string
		wantLog string
	}{
		{"auto with kvm", AccelAuto, TEENone, usable, AccelKVM, "", ""},
		{"auto falls back to tcg", AccelAuto, TEENone, pvm, AccelTCG, "", "host KVM is PVM"},
		{"empty means auto", "", TEENone, pvm, AccelTCG, "", "using TCG"},
		{"explicit tcg not probed", AccelTCG, TEENone, nil, AccelTCG, "", ""},
		{"explicit kvm not probed", AccelKVM, TEENone, nil, AccelKVM, "", ""},
		{"snp never falls back", AccelAuto, TEESNP, pvm, "", "snp needs KVM", ""},
		{"tdx with kvm", AccelAuto, TEETDX, usable, AccelKVM, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))
			got, err := ResolveAccel(Config{Accel: tt.accel, TEE: TEE{Kind: tt.tee}}, tt.probe, logger)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResolveAccel = %q, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ResolveAccel = %q, %v; want %q", got, err, tt.want)
			}
			if tt.wantLog == "" && logs.Len() > 0 {
				t.Errorf("unexpected log: %s", logs.String())
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log %q lacks %q", logs.String(), tt.wantLog)
			}
		})
	}
}

package launch

import (
	"errors"
	"testing"
)

func TestParseMemory(t *testing.T) {
	for in, want := range map[string]uint64{"2G": 2 << 30, "2048M": 2 << 30, "2048": 2 << 30, "512k": 512 << 10, "1T": 1 << 40, "4096B": 4096} {
		if got, err := ParseMemory(in); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "0", "-1G", "2X", "99999999999999T"} {
		if _, err := ParseMemory(in); !errors.Is(err, ErrConfig) {
			t.Errorf("ParseMemory(%q): err %v, want ErrConfig", in, err)
		}
	}
}

func TestConfigRefusals(t *testing.T) {
	for name, c := range map[string]Config{
		"unknown TEE":      {TEE: "sev"},
		"snp without cpu":  {TEE: TEESNP, VCPUs: 1},
		"snp with memory":  {TEE: TEESNP, VCPUs: 1, CPUType: "EPYC-v4", Memory: 1 << 30},
		"tdx with vcpus":   {TEE: TEETDX, VCPUs: 2, Memory: 1 << 30},
		"tdx with cpu":     {TEE: TEETDX, CPUType: "EPYC-v4", Memory: 1 << 30},
		"tdx with feature": {TEE: TEETDX, GuestFeatures: 1},
	} {
		if _, err := MeasureBytes(c, []byte("fw"), []byte("k"), nil); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err %v, want ErrConfig", name, err)
		}
	}
	if _, err := Measure(Config{TEE: TEESNP}); !errors.Is(err, ErrConfig) {
		t.Errorf("no files: err %v, want ErrConfig", err)
	}
}

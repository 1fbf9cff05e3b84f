package qemu

import (
	"crypto/sha256"
	"strings"
	"testing"
)

func TestArgsEmulatedSPGolden(t *testing.T) {
	for _, agent := range []Agent{{Kind: AgentVirtioSerial}, {Kind: AgentVsock, CID: 42}} {
		name := "emulated-sp-q35-" + string(agent.Kind) + "-user"
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Accel = AccelTCG
			cfg.Agent = agent
			cfg.Network = Network{Kind: NetworkUser}
			cfg.EmulatedSP = true
			checkGolden(t, name, cfg)
		})
	}
}

func TestEmulatedSPRefusedWithRealTEE(t *testing.T) {
	digest := sha256.Sum256([]byte("initdata"))
	cfg := baseConfig()
	cfg.Accel = AccelKVM
	cfg.Firmware = "/usr/share/ovmf/OVMF.amdsev.fd"
	cfg.TEE = TEE{Kind: TEESNP, InitdataDigest: digest[:]}
	cfg.EmulatedSP = true
	if _, err := Args(cfg); err == nil || !strings.Contains(err.Error(), "emulated SP port") {
		t.Errorf("Args = %v, want an emulated SP refusal", err)
	}
}

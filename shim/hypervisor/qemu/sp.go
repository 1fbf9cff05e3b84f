package qemu

import (
	"fmt"
	"path/filepath"
)

// SPPortName is the virtserialport of the emulated SEV-SNP secure
// processor (emulated/snp); the guest opens /dev/virtio-ports/cloak.sp.
const SPPortName = "cloak.sp"

// QOM ids of the emulated SP port.
const (
	idSP       = "sp"
	idSPPort   = "sp-port"
	idSPSerial = "vserial-sp"
)

// SPSocket is the host end of the emulated SP port. QEMU listens on it; the
// shim's emulated SP connects after Start.
func (c Config) SPSocket() string { return filepath.Join(c.RunDir, "sp.sock") }

func (c Config) validateSP() error {
	if c.EmulatedSP && c.TEE.Kind != TEENone {
		return fmt.Errorf("an emulated SP port with tee %q: a real TEE guest asks its hardware SP", c.TEE.Kind)
	}
	return nil
}

// spArgs adds the emulated SP port: on the agent's virtio-serial controller
// when there is one, else on a controller of its own.
func spArgs(cfg Config) []string {
	if !cfg.EmulatedSP {
		return nil
	}
	var a []string
	bus := idSerial
	if cfg.Agent.Kind != AgentVirtioSerial {
		bus = idSPSerial
		a = append(a, "-device", "virtio-serial-pci,id="+idSPSerial+virtioOptions(cfg))
	}
	return append(a,
		"-chardev", "socket,id="+idSP+",path="+escape(cfg.SPSocket())+",server=on,wait=off",
		"-device", "virtserialport,bus="+bus+".0,chardev="+idSP+",id="+idSPPort+",name="+SPPortName)
}

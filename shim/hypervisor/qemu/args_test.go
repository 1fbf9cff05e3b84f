package qemu

import (
	"crypto/sha256"
	"crypto/sha512"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func baseConfig() Config {
	return Config{
		VCPUs:      2,
		MemoryMiB:  1024,
		Kernel:     "/var/lib/cloak/image/vmlinuz",
		Initrd:     "/var/lib/cloak/image/initrd.img",
		Cmdline:    "console=ttyS0 quiet panic=-1",
		ConsoleLog: "/var/log/cloak/pod1-console.log",
		RunDir:     "/run/cloak/pod1",
	}
}

func TestArgsGolden(t *testing.T) {
	snpDigest := sha256.Sum256([]byte("initdata"))
	tdxDigest := sha512.Sum384([]byte("initdata"))
	tees := map[TEEKind]TEE{
		TEENone: {Kind: TEENone},
		TEESNP:  {Kind: TEESNP, InitdataDigest: snpDigest[:]},
		TEETDX:  {Kind: TEETDX, InitdataDigest: tdxDigest[:]},
	}
	firmware := map[TEEKind]string{TEESNP: "/usr/share/ovmf/OVMF.amdsev.fd", TEETDX: "/usr/share/ovmf/OVMF.inteltdx.fd"}

	for _, tee := range []TEEKind{TEENone, TEESNP, TEETDX} {
		for _, machine := range []Machine{MachineQ35, MachineMicroVM} {
			if tee != TEENone && machine == MachineMicroVM {
				continue // rejected by validation, see TestConfigErrors
			}
			for _, agent := range []Agent{{Kind: AgentVirtioSerial}, {Kind: AgentVsock, CID: 42}} {
				for _, network := range []NetworkKind{NetworkNone, NetworkUser} {
					cfg := baseConfig()
					cfg.Machine = machine
					cfg.Accel = AccelTCG
					if tee != TEENone {
						cfg.Accel = AccelKVM
					}
					cfg.Firmware = firmware[tee]
					cfg.TEE = tees[tee]
					cfg.Agent = agent
					cfg.Network = Network{Kind: network}
					name := strings.Join([]string{string(tee), string(machine), string(agent.Kind), string(network)}, "-")
					t.Run(name, func(t *testing.T) { checkGolden(t, name, cfg) })
				}
			}
		}
	}
	// The smallest config: only what the lifecycle tests boot (no kernel).
	t.Run("minimal", func(t *testing.T) {
		checkGolden(t, "minimal", Config{RunDir: "/run/cloak/pod1", Accel: AccelTCG})
	})
	t.Run("none-q35-virtio-serial-tap", func(t *testing.T) {
		cfg := baseConfig()
		cfg.Accel = AccelTCG
		cfg.Network = Network{Kind: NetworkTAP, TAPs: []TAPDevice{
			{File: os.Stdin, MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}},
			{File: os.Stdin, MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 2}},
		}}
		checkGolden(t, "none-q35-virtio-serial-tap", cfg)
	})
	for _, machine := range []Machine{MachineQ35, MachineMicroVM} {
		name := "none-" + string(machine) + "-virtio-serial-user-virtiofs"
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Machine, cfg.Accel = machine, AccelTCG
			cfg.Network = Network{Kind: NetworkUser}
			cfg.SharedFS = SharedFS{Dir: "/run/cloak/pod1-fs"}
			checkGolden(t, name, cfg)
		})
	}
	t.Run("none-q35-kvm", func(t *testing.T) {
		cfg := baseConfig()
		cfg.Accel = AccelKVM
		checkGolden(t, "none-q35-kvm", cfg)
	})
	// A kernel booting a read-only root disk, no initrd.
	rootTEEs := []struct {
		name     string
		tee      TEEKind
		emulated bool
	}{{"none", TEENone, false}, {"emulated-sp", TEENone, true}, {"snp", TEESNP, false}, {"tdx", TEETDX, false}}
	for _, rt := range rootTEEs {
		name := rt.name + "-q35-virtio-serial-user-rootdisk"
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Accel = AccelTCG
			if rt.tee != TEENone {
				cfg.Accel = AccelKVM
			}
			cfg.Firmware = firmware[rt.tee]
			cfg.TEE = tees[rt.tee]
			cfg.EmulatedSP = rt.emulated
			cfg.Network = Network{Kind: NetworkUser}
			cfg.Initrd = ""
			cfg.Cmdline = "console=ttyS0 quiet panic=-1 root=/dev/vda ro"
			cfg.RootDisk = rootImage(t, "root.img")
			checkGolden(t, name, cfg)
		})
	}
}

// goldenRootDisk stands for the test's root image in golden files, whose
// real path is a fresh temporary directory each run.
const goldenRootDisk = "/var/lib/cloak/image/root.img"

// rootImage creates an empty raw image called name and returns its path.
func rootImage(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func checkGolden(t *testing.T, name string, cfg Config) {
	t.Helper()
	args, err := Args(cfg)
	if err != nil {
		t.Fatalf("Args: %v", err)
	}
	got := strings.Join(args, "\n") + "\n"
	if cfg.RootDisk != "" {
		got = strings.ReplaceAll(got, escape(cfg.RootDisk), goldenRootDisk)
	}
	path := filepath.Join("testdata", "args", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("Args for %s differ from %s (run with -update if intended)\ngot:\n%s\nwant:\n%s", name, path, got, want)
	}
}

func TestArgsEscapesCommas(t *testing.T) {
	root := rootImage(t, "root,1.img")
	args, err := Args(Config{RunDir: "/run/a,b", ConsoleLog: "/log/c,d.log", RootDisk: root, Accel: AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"unix:/run/a,,b/qmp.sock,server=on", "path=/log/c,,d.log", "path=/run/a,,b/agent.sock,server=on",
		"file=" + filepath.Dir(root) + "/root,,1.img,if=none"} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	snp := sha256.Sum256(nil)
	tdx := sha512.Sum384(nil)
	teeCfg := func(kind TEEKind, digest []byte, mutate func(*Config)) Config {
		c := baseConfig()
		c.Accel = AccelKVM
		c.Firmware = "/ovmf.fd"
		c.TEE = TEE{Kind: kind, InitdataDigest: digest}
		if mutate != nil {
			mutate(&c)
		}
		return c
	}
	base := func(mutate func(*Config)) Config {
		c := baseConfig()
		c.Accel = AccelTCG
		mutate(&c)
		return c
	}
	noRoot := filepath.Join(t.TempDir(), "missing.img")
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"relative root disk", base(func(c *Config) { c.RootDisk = "root.img" }), `root disk "root.img" is relative`},
		{"missing root disk", base(func(c *Config) { c.RootDisk = noRoot }), noRoot + ": no such file"},
		{"root disk is a directory", base(func(c *Config) { c.RootDisk = t.TempDir() }), "not a regular file"},
		{"no run dir", base(func(c *Config) { c.RunDir = "" }), "Config.RunDir"},
		{"relative run dir", base(func(c *Config) { c.RunDir = "run/pod1" }), "relative"},
		{"socket path too long", base(func(c *Config) { c.RunDir = "/" + strings.Repeat("d", 100) }), "unix socket limit"},
		{"unknown machine", base(func(c *Config) { c.Machine = "pc" }), `machine "pc"`},
		{"unknown accel", base(func(c *Config) { c.Accel = "hvf" }), `accel "hvf"`},
		{"auto accel unresolved", base(func(c *Config) { c.Accel = AccelAuto }), "ResolveAccel"},
		{"negative vcpus", base(func(c *Config) { c.VCPUs = -1 }), "vcpus -1"},
		{"too little memory", base(func(c *Config) { c.MemoryMiB = 32 }), "32 MiB"},
		{"initrd without kernel", base(func(c *Config) { c.Kernel = "" }), "without a kernel"},
		{"unknown agent", base(func(c *Config) { c.Agent.Kind = "tcp" }), `agent channel "tcp"`},
		{"vsock without cid", base(func(c *Config) { c.Agent = Agent{Kind: AgentVsock} }), "guest CID"},
		{"vsock host cid", base(func(c *Config) { c.Agent = Agent{Kind: AgentVsock, CID: 2} }), "guest CID"},
		{"port name with comma", base(func(c *Config) { c.Agent.PortName = "a,b" }), "port name"},
		{"unknown network", base(func(c *Config) { c.Network.Kind = "macvtap" }), `network "macvtap"`},
		{"tap without devices", base(func(c *Config) { c.Network.Kind = NetworkTAP }), "1 to 16 TAP devices, got 0"},
		{"tap without MAC", base(func(c *Config) {
			c.Network = Network{Kind: NetworkTAP, TAPs: []TAPDevice{{File: os.Stdin}}}
		}), "6-byte MAC"},
		{"user with TAPs", base(func(c *Config) {
			c.Network = Network{Kind: NetworkUser, TAPs: []TAPDevice{{File: os.Stdin, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}}}
		}), "takes no TAP devices"},
		{"unknown tee", base(func(c *Config) { c.TEE.Kind = "sgx" }), `tee "sgx"`},
		{"snp on microvm", teeCfg(TEESNP, snp[:], func(c *Config) { c.Machine = MachineMicroVM }), `needs machine "q35"`},
		{"tdx on microvm", teeCfg(TEETDX, tdx[:], func(c *Config) { c.Machine = MachineMicroVM }), `needs machine "q35"`},
		{"snp under tcg", teeCfg(TEESNP, snp[:], func(c *Config) { c.Accel = AccelTCG }), "TCG cannot run it"},
		{"snp without firmware", teeCfg(TEESNP, snp[:], func(c *Config) { c.Firmware = "" }), "OVMF"},
		{"tdx without kernel", teeCfg(TEETDX, tdx[:], func(c *Config) { c.Kernel, c.Initrd, c.Cmdline = "", "", "" }), "needs a Kernel"},
		{"snp host-data of 48 bytes", teeCfg(TEESNP, tdx[:], nil), "must be 32 bytes, got 48"},
		{"snp without host-data", teeCfg(TEESNP, nil, nil), "must be 32 bytes, got 0"},
		{"tdx mrconfigid of 32 bytes", teeCfg(TEETDX, snp[:], nil), "must be 48 bytes, got 32"},
		{"shared dir with snp", teeCfg(TEESNP, snp[:], func(c *Config) { c.SharedFS.Dir = "/srv/share" }), "confidential guest shares no host directory"},
		{"relative shared dir", base(func(c *Config) { c.SharedFS.Dir = "share" }), "absolute paths"},
		{"virtio-fs tag with comma", base(func(c *Config) { c.SharedFS = SharedFS{Dir: "/s", Tag: "a,b"} }), "virtio-fs tag"},
		{"virtio-fs tag too long", base(func(c *Config) { c.SharedFS = SharedFS{Dir: "/s", Tag: strings.Repeat("t", 37)} }), "up to 36"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Args(tt.cfg)
			if err == nil {
				t.Fatalf("Args accepted the config, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestCommandLineQuotes(t *testing.T) {
	got := commandLine("/usr/bin/qemu", []string{"-append", "console=ttyS0 quiet", "-m", "512M", "-x", ""})
	want := `/usr/bin/qemu -append "console=ttyS0 quiet" -m 512M -x ""`
	if got != want {
		t.Errorf("commandLine = %s, want %s", got, want)
	}
}

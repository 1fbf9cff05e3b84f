package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, doc string
		want      Config
		wantErr   string
	}{
		{name: "empty gives defaults", doc: "", want: Config{
			ImageDir: DefaultImageDir, Accel: "auto", VCPUs: 1, MemoryMiB: 512, RunDir: DefaultRunDir,
			AgentTimeoutSeconds: DefaultAgentTimeoutSeconds, TEE: "none",
			GuestKernel: GuestKernelCloak, Kernel: DefaultImageDir + "/vmlinuz", RootDisk: DefaultImageDir + "/root.img",
			SharedFS: "none", Virtiofsd: DefaultVirtiofsd, EmulatedSNPDir: DefaultEmulatedSNPDir, VTPMStateDir: DefaultVTPMStateDir,
			EmulatedPlatform: "snp", EmulatedTDXDir: DefaultEmulatedTDXDir,
		}},
		{name: "every key", doc: `
image_dir = "/img"
accel = "tcg"
vcpus = 2
memory_mib = 1024
run_dir = "/r"
console_log_dir = "/logs"
agent_timeout_seconds = 30
tee = "emulated"
kernel = "/k"
initrd = "/i"
firmware = "/usr/share/ovmf/OVMF.fd"
allowed_annotations = ["initdata", "vcpus", "memory"]
[kbs]
url = "https://10.88.0.1:8080"
ca_file = "/etc/cloak/kbs-ca.pem"
[registry]
insecure = ["127.0.0.1:5000"]
mirrors = { "127.0.0.1:5000" = "http://10.0.2.2:5000" }
`, want: Config{
			ImageDir: "/img", Accel: "tcg", VCPUs: 2, MemoryMiB: 1024, RunDir: "/r", ConsoleLogDir: "/logs",
			AgentTimeoutSeconds: 30, TEE: "emulated", GuestKernel: GuestKernelCloak, Kernel: "/k", Initrd: "/i", RootDisk: "/img/root.img", Firmware: "/usr/share/ovmf/OVMF.fd",
			SharedFS: "none", Virtiofsd: DefaultVirtiofsd, EmulatedSNPDir: DefaultEmulatedSNPDir, VTPMStateDir: DefaultVTPMStateDir,
			EmulatedPlatform: "snp", EmulatedTDXDir: DefaultEmulatedTDXDir,
			AllowedAnnotations: []string{"initdata", "vcpus", "memory"},
			KBS:                KBS{URL: "https://10.88.0.1:8080", CAFile: "/etc/cloak/kbs-ca.pem"},
			Registry: Registry{
				Insecure: []string{"127.0.0.1:5000"},
				Mirrors:  map[string]string{"127.0.0.1:5000": "http://10.0.2.2:5000"},
			},
		}},
		{name: "unknown key", doc: "vcpu = 2\n", wantErr: "unknown key"},
		{name: "debian kernel", doc: `guest_kernel = "debian"`, want: Config{
			ImageDir: DefaultImageDir, Accel: "auto", VCPUs: 1, MemoryMiB: 512, RunDir: DefaultRunDir,
			AgentTimeoutSeconds: DefaultAgentTimeoutSeconds, TEE: TEENone, GuestKernel: GuestKernelDebian,
			Kernel: DefaultImageDir + "/debian/vmlinuz", Initrd: DefaultImageDir + "/debian/initrd.img",
			SharedFS: SharedFSNone, Virtiofsd: DefaultVirtiofsd, EmulatedSNPDir: DefaultEmulatedSNPDir,
			EmulatedPlatform: TEESNP, EmulatedTDXDir: DefaultEmulatedTDXDir, VTPMStateDir: DefaultVTPMStateDir,
		}},
		{name: "bad guest kernel", doc: `guest_kernel = "ubuntu"`, wantErr: `guest_kernel "ubuntu"`},
		{name: "root disk on debian kernel", doc: "guest_kernel = \"debian\"\nroot_disk = \"/r.img\"", wantErr: "root_disk with guest_kernel"},
		{name: "bad accel", doc: `accel = "hvf"`, wantErr: "accel"},
		{name: "too little memory", doc: "memory_mib = 64", wantErr: "memory_mib"},
		{name: "relative dir", doc: `image_dir = "img"`, wantErr: "absolute"},
		{name: "not toml", doc: "vcpus = ", wantErr: "toml"},
		{name: "bad tee", doc: `tee = "sev"`, wantErr: "tee"},
		{name: "shared fs on a confidential handler", doc: "tee = \"snp\"\nshared_fs = \"virtio-fs\"", wantErr: "confidential"},
		{name: "shared fs without tee", doc: `shared_fs = "virtio-fs"`, want: Config{
			ImageDir: DefaultImageDir, Accel: "auto", VCPUs: 1, MemoryMiB: 512, RunDir: DefaultRunDir,
			AgentTimeoutSeconds: DefaultAgentTimeoutSeconds, TEE: "none",
			GuestKernel: GuestKernelCloak, Kernel: DefaultImageDir + "/vmlinuz", RootDisk: DefaultImageDir + "/root.img",
			SharedFS: "virtio-fs", Virtiofsd: DefaultVirtiofsd, EmulatedSNPDir: DefaultEmulatedSNPDir, VTPMStateDir: DefaultVTPMStateDir,
			EmulatedPlatform: "snp", EmulatedTDXDir: DefaultEmulatedTDXDir,
		}},
		{name: "bad shared fs", doc: `shared_fs = "9p"`, wantErr: "shared_fs"},
		{name: "bad emulated platform", doc: `emulated_platform = "sev"`, wantErr: "emulated_platform"},
		{name: "host attack without emulated tee", doc: `emulated_host_attack = "initdata-after-launch"`, wantErr: "emulated TEEs only"},
		{name: "unknown host attack", doc: "tee = \"emulated\"\nemulated_host_attack = \"swap-kernel\"", wantErr: "initdata-after-launch"},
		{name: "host attack on emulated tee", doc: "tee = \"emulated\"\nemulated_host_attack = \"initdata-after-launch\"", want: Config{
			ImageDir: DefaultImageDir, Accel: "auto", VCPUs: 1, MemoryMiB: 512, RunDir: DefaultRunDir,
			AgentTimeoutSeconds: DefaultAgentTimeoutSeconds, TEE: "emulated",
			GuestKernel: GuestKernelCloak, Kernel: DefaultImageDir + "/vmlinuz", RootDisk: DefaultImageDir + "/root.img",
			SharedFS: "none", Virtiofsd: DefaultVirtiofsd, EmulatedSNPDir: DefaultEmulatedSNPDir, VTPMStateDir: DefaultVTPMStateDir,
			EmulatedPlatform: "snp", EmulatedTDXDir: DefaultEmulatedTDXDir, EmulatedHostAttack: "initdata-after-launch",
		}},
		{name: "vtpm with hardware tee", doc: "tee = \"snp\"\nvtpm = true", wantErr: "vtpm"},
		{name: "relative vtpm dir", doc: "vtpm = true\nvtpm_state_dir = \"v\"", wantErr: "vtpm_state_dir"},
		{name: "unknown annotation", doc: `allowed_annotations = ["kernel"]`, wantErr: "allowed_annotations"},
		{name: "initdata file and url", doc: "[kbs]\nurl = \"https://k\"\ninitdata_file = \"/i\"", wantErr: "initdata_file"},
		{name: "ca without url", doc: "[kbs]\nca_file = \"/ca.pem\"", wantErr: "without url"},
		{name: "kbs url scheme", doc: "[kbs]\nurl = \"ftp://k\"", wantErr: "url"},
		{name: "relative firmware", doc: `firmware = "OVMF.fd"`, wantErr: "firmware"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse: err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(good, []byte("vcpus = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte(strings.Repeat("#", maxFileSize+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(good); err != nil || c.VCPUs != 3 {
		t.Errorf("Load(good) = %+v, %v", c, err)
	}
	if c, err := Load(""); err != nil || c.ImageDir != DefaultImageDir {
		t.Errorf("Load(\"\") = %+v, %v", c, err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger") {
		t.Errorf("Load(big): %v, want a size error", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); err == nil || !strings.Contains(err.Error(), "ConfigPath") {
		t.Errorf("Load(missing): %v, want a hint about ConfigPath", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("vcpus = 2\n[registry]\ninsecure = [\"a\"]\n"))
	f.Add([]byte(`accel = "kvm"`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := Parse(doc)
		if err != nil {
			return
		}
		if c.VCPUs < 1 || c.MemoryMiB < 128 || c.RunDir == "" {
			t.Fatalf("Parse accepted an invalid config: %+v", c)
		}
	})
}

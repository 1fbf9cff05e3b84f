package task

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/measurements/launch"
	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// measuredImage loads the image `make image` built (CLOAK_IMAGE_DIR, with
// its SNP and TDX reference values) and the path of the OVMF build fwName
// `make vm-deps` cached.
func measuredImage(t *testing.T, fwName string) (dir string, m *build.Manifest, fw string) {
	t.Helper()
	dir = os.Getenv("CLOAK_IMAGE_DIR")
	if dir == "" {
		t.Skip("CLOAK_IMAGE_DIR is unset: `make unit` points it at the image `make image` built")
	}
	m, err := build.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Measurements.SNP == nil || m.Measurements.TDX == nil {
		t.Fatalf("%s has no SNP or TDX reference values: make image builds it with --snp-firmware and --tdx-firmware", dir)
	}
	home, _ := os.UserHomeDir()
	return dir, m, filepath.Join(home, ".cache/cloak/ovmf-2026.08+ds-2", fwName)
}

// launchFixture loads the measured image and the installed handler config
// for tee, pointed at that image and at the OVMF build fwName.
func launchFixture(t *testing.T, tee, fwName string) (config.Config, *build.Manifest) {
	t.Helper()
	dir, m, fw := measuredImage(t, fwName)
	doc, err := os.ReadFile(filepath.Join("..", "config", "handlers", "configuration-"+tee+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(doc), "\n") {
		switch {
		case strings.HasPrefix(l, "image_dir ="):
			l = "image_dir = " + strconv.Quote(dir)
		case strings.HasPrefix(l, "firmware ="):
			l = "firmware = " + strconv.Quote(fw)
		}
		lines = append(lines, l)
	}
	cfg, err := config.Parse([]byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Firmware != fw {
		t.Fatalf("configuration-%s.toml sets no firmware", tee)
	}
	return cfg, m
}

// launchArgs is the QEMU command line the shim would start for a VM of
// vcpus on cfg, with the checks every measured launch needs.
func launchArgs(t *testing.T, cfg config.Config, m *build.Manifest, vcpus int, tee qemu.TEE) qemu.Config {
	t.Helper()
	vs := vmSettings{vcpus: vcpus, memoryMiB: cfg.MemoryMiB, tee: tee}
	qcfg, err := launchConfig(cfg, vs, "k8s.io", "pod", filepath.Join(t.TempDir(), "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	qcfg.Accel = qemu.AccelKVM
	args, err := qemu.Args(qcfg)
	if err != nil {
		t.Fatal(err)
	}
	after := func(flag string) string {
		i := slices.Index(args, flag)
		if i < 0 || i+1 >= len(args) {
			return ""
		}
		return args[i+1]
	}
	if after("-kernel") != filepath.Join(cfg.ImageDir, build.KernelFile) || slices.Contains(args, "-initrd") ||
		after("-append") != m.Cmdline || after("-bios") != cfg.Firmware || after("-smp") != strconv.Itoa(vcpus) {
		t.Fatalf("launch: -kernel %q -initrd %v -append %q -bios %q -smp %q; want the image's kernel, no initrd, the manifest's command line, %s, %d",
			after("-kernel"), slices.Contains(args, "-initrd"), after("-append"), after("-bios"), after("-smp"), cfg.Firmware, vcpus)
	}
	if !strings.Contains(strings.Join(args, " "), "file="+filepath.Join(cfg.ImageDir, build.RootFile)) {
		t.Fatalf("launch attaches no %s: %q", build.RootFile, args)
	}
	return qcfg
}

// TestSNPLaunchIsMeasured ties the cloak-snp handler's QEMU launch to the
// image's reference values: the firmware, kernel, initrd (none) and command
// line the shim hands QEMU, measured for the vCPU count it launches, give
// exactly the value manifest.json (and so reference-values.cose) records.
// A handler or launcher change that moved the launch away from what was
// measured fails here, not at a KBS.
func TestSNPLaunchIsMeasured(t *testing.T) {
	cfg, m := launchFixture(t, "snp", "OVMF.amdsev.fd")
	tee := qemu.TEE{Kind: qemu.TEESNP, InitdataDigest: make([]byte, 32)}
	for _, vcpus := range []int{cfg.VCPUs, 2, 16} {
		qcfg := launchArgs(t, cfg, m, vcpus, tee)
		for _, cpu := range []string{"EPYC-v4", "EPYC-Milan", "EPYC-Genoa"} {
			r, err := launch.Measure(launch.Config{TEE: launch.TEESNP, Firmware: qcfg.Firmware, Kernel: qcfg.Kernel,
				Initrd: qcfg.Initrd, Cmdline: qcfg.Cmdline, VCPUs: qcfg.VCPUs, CPUType: cpu, GuestFeatures: m.Measurements.SNP.GuestFeatures})
			if err != nil {
				t.Fatal(err)
			}
			if r.FirmwareSHA256 != m.Measurements.SNP.Firmware.SHA256 {
				t.Fatalf("firmware %s sha256 %s, the manifest's values are over %s", qcfg.Firmware, r.FirmwareSHA256, m.Measurements.SNP.Firmware.SHA256)
			}
			i := slices.IndexFunc(m.Measurements.SNP.Values, func(v build.SNPValue) bool { return v.CPUType == cpu && v.VCPUs == vcpus })
			if i < 0 || m.Measurements.SNP.Values[i].Measurement != r.Values[0].Value {
				t.Errorf("%s, %d vCPUs: the launch measures %s, the manifest records %+v", cpu, vcpus, r.Values[0].Value, m.Measurements.SNP.Values[max(i, 0)])
			}
		}
	}
}

// TestTDXLaunchIsMeasured is the same for cloak-tdx: MRTD, RTMR1 and RTMR2
// of the launch the shim builds (its memory size included: QEMU patches the
// kernel's setup header with it) equal the manifest's.
func TestTDXLaunchIsMeasured(t *testing.T) {
	cfg, m := launchFixture(t, "tdx", "OVMF.inteltdx.fd")
	qcfg := launchArgs(t, cfg, m, cfg.VCPUs, qemu.TEE{Kind: qemu.TEETDX, InitdataDigest: make([]byte, 48)})
	r, err := launch.Measure(launch.Config{TEE: launch.TEETDX, Firmware: qcfg.Firmware, Kernel: qcfg.Kernel,
		Initrd: qcfg.Initrd, Cmdline: qcfg.Cmdline, Memory: uint64(qcfg.MemoryMiB) << 20})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{launch.TDXMRTD: m.Measurements.TDX.MRTD, launch.TDXRTMR1: m.Measurements.TDX.RTMR1, launch.TDXRTMR2: m.Measurements.TDX.RTMR2}
	for _, v := range r.Values {
		if w, ok := want[v.Name]; ok && v.Value != w {
			t.Errorf("%s: the launch measures %s, the manifest records %s", v.Name, v.Value, w)
		}
		delete(want, v.Name)
	}
	if len(want) > 0 {
		t.Errorf("not measured: %v", want)
	}
}

// TestEmulatedSNPReportsTheRealMeasurement: with emulated_snp_firmware set,
// the emulated SEV-SNP platform reports the MEASUREMENT a real SNP host
// would for the VM the shim launches, so the image's signed reference
// values (not the emulated digest) are what a KBS compares it with.
func TestEmulatedSNPReportsTheRealMeasurement(t *testing.T) {
	dir, m, fw := measuredImage(t, "OVMF.amdsev.fd")
	doc, err := os.ReadFile(filepath.Join("..", "config", "handlers", "configuration-emulated.toml"))
	if err != nil {
		t.Fatal(err)
	}
	load := func(cpu string) config.Config {
		t.Helper()
		text := strings.Replace(string(doc), `image_dir = "/usr/share/cloak/image"`, "image_dir = "+strconv.Quote(dir), 1)
		text = strings.Replace(text, "\n[kbs]", "\nemulated_snp_firmware = "+strconv.Quote(fw)+cpu+"\n[kbs]", 1)
		cfg, err := config.Parse([]byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	recorded := func(cpu string, vcpus int) string {
		i := slices.IndexFunc(m.Measurements.SNP.Values, func(v build.SNPValue) bool { return v.CPUType == cpu && v.VCPUs == vcpus })
		if i < 0 {
			t.Fatalf("manifest records no SNP value for %s, %d vCPUs", cpu, vcpus)
		}
		return m.Measurements.SNP.Values[i].Measurement
	}
	for _, tc := range []struct {
		cpuLine, cpu string
		vcpus        int
	}{
		{"", config.DefaultEmulatedSNPCPUType, 1},
		{"", config.DefaultEmulatedSNPCPUType, 4},
		{"\nemulated_snp_cpu_type = \"EPYC-v4\"", "EPYC-v4", 2},
	} {
		cfg := load(tc.cpuLine)
		if cfg.EmulatedSNPCPUType != tc.cpu {
			t.Fatalf("emulated_snp_cpu_type = %q, want %q", cfg.EmulatedSNPCPUType, tc.cpu)
		}
		vs := vmSettings{vcpus: tc.vcpus, memoryMiB: cfg.MemoryMiB, tee: qemu.TEE{Kind: qemu.TEENone}}
		qcfg, err := launchConfig(cfg, vs, "k8s.io", "pod", filepath.Join(t.TempDir(), "console.log"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := emulatedSNPMeasurement(cfg, qcfg)
		if err != nil {
			t.Fatal(err)
		}
		if want := recorded(tc.cpu, tc.vcpus); hex.EncodeToString(got) != want {
			t.Errorf("%s, %d vCPUs: the emulated SP reports %x, the manifest records %s", tc.cpu, tc.vcpus, got, want)
		}
		// A changed command line (the root hash in it) is another value.
		qcfg.Cmdline += " x"
		if other, err := emulatedSNPMeasurement(cfg, qcfg); err != nil || hex.EncodeToString(other) == hex.EncodeToString(got) {
			t.Errorf("changed command line: %x %v, want another measurement", other, err)
		}
	}
	// Refused configurations name the key.
	for _, bad := range []struct{ text, want string }{
		{"tee = \"none\"\nemulated_snp_firmware = \"/x.fd\"\n", "emulated_snp_firmware with tee \"none\""},
		{"tee = \"emulated\"\nemulated_platform = \"tdx\"\nemulated_snp_firmware = \"/x.fd\"\n", "emulated_platform \"tdx\""},
		{"tee = \"emulated\"\nemulated_snp_firmware = \"x.fd\"\n", "emulated_snp_firmware \"x.fd\": want an absolute path"},
		{"tee = \"emulated\"\nemulated_snp_firmware = \"/x.fd\"\nemulated_snp_cpu_type = \"Zen9\"\n", "emulated_snp_cpu_type \"Zen9\": want one of"},
	} {
		if _, err := config.Parse([]byte(bad.text)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want an error containing %q", bad.text, err, bad.want)
		}
	}
	// A firmware that is not there fails the pod's start with the key.
	cfg := load("")
	cfg.EmulatedSNPFirmware = filepath.Join(t.TempDir(), "missing.fd")
	qcfg, err := launchConfig(cfg, vmSettings{vcpus: 1, memoryMiB: cfg.MemoryMiB, tee: qemu.TEE{Kind: qemu.TEENone}}, "k8s.io", "pod", filepath.Join(t.TempDir(), "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := emulatedSNPMeasurement(cfg, qcfg); err == nil || !strings.Contains(err.Error(), "emulated_snp_firmware") {
		t.Errorf("missing firmware: %v, want an error naming emulated_snp_firmware", err)
	}
}

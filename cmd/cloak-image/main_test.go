package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/guest-image/build/initramfs"
	"github.com/cloak-containers/cloak/guest-image/build/rootimg"
	"github.com/cloak-containers/cloak/internal/kat"
	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/internal/version"
	"github.com/cloak-containers/cloak/measurements"
	"github.com/cloak-containers/cloak/measurements/bundle"
	"github.com/cloak-containers/cloak/measurements/launch"
)

// TestCommandLine: a mistake on the command line exits 1 (2 is kept for a
// mismatch) with the way to the usage; --version exits 0.
func TestCommandLine(t *testing.T) {
	const hint = "\n  run 'cloak-image --help' for usage\n"
	tests := []struct {
		name         string
		args         []string
		code         int
		stdout, want string
	}{
		{"unknown flag", []string{"--bogus"}, exitError, "", "cloak-image: unknown flag: --bogus" + hint},
		{"unknown flag of a subcommand", []string{"measure", "--bogus"}, exitError, "", "cloak-image: unknown flag: --bogus" + hint},
		{"unknown command", []string{"verify"}, exitError, "", `cloak-image: unknown command "verify" for "cloak-image"` + hint},
		{"version", []string{"--version"}, 0, "cloak-image version " + version.String() + "\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code || stdout.String() != tt.stdout || stderr.String() != tt.want {
				t.Fatalf("exit %d, want %d\nstdout %q, want %q\nstderr %q, want %q", code, tt.code, stdout.String(), tt.stdout, stderr.String(), tt.want)
			}
		})
	}
}

// imageDir writes a small image directory with a correct manifest: a real
// root disk (EROFS + dm-verity) of one file, stand-in kernels and initrd.
func imageDir(t *testing.T) (dir, measurement string) {
	t.Helper()
	dir = t.TempDir()
	kernel, dkernel, dinitrd := []byte("kernel bytes"), []byte("debian kernel bytes"), []byte("initrd bytes")
	art := func(b []byte) build.Artifact {
		s256, s384 := sha256.Sum256(b), sha512.Sum384(b)
		return build.Artifact{Size: int64(len(b)), SHA256: hex.EncodeToString(s256[:]), SHA384: hex.EncodeToString(s384[:])}
	}
	var tree initramfs.Archive
	if err := tree.File(build.AgentPath, 0o755, []byte("agent")); err != nil {
		t.Fatal(err)
	}
	root, err := rootimg.Build(context.Background(), &tree, filepath.Join(dir, build.RootFile))
	if err != nil {
		t.Fatal(err)
	}
	cmdline := build.Cmdline + " " + root.KernelArgs(build.AgentPath)
	measurement = hex.EncodeToString(measurements.EmulatedLaunchDigest(kernel, nil, cmdline))
	m := build.Manifest{
		Schema: build.Schema, Kernel: art(kernel), Cmdline: cmdline,
		Root:         build.RootDisk{File: build.RootFile, FS: "erofs", Image: *root},
		KernelBuild:  build.KernelBuild{SourcePackage: "prebuilt"},
		Measurements: build.Measurements{Emulated: measurement},
		Debian: build.DebianFlavour{Kernel: art(dkernel), Initrd: art(dinitrd), Cmdline: build.Cmdline,
			Measurements: build.Measurements{Emulated: hex.EncodeToString(measurements.EmulatedLaunchDigest(dkernel, dinitrd, build.Cmdline))}},
	}
	mb, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, build.DebianDir), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{build.KernelFile: kernel, build.DebianDir + "/" + build.KernelFile: dkernel,
		build.DebianDir + "/" + build.InitrdFile: dinitrd, build.ManifestFile: mb} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, measurement
}

func TestMeasure(t *testing.T) {
	tests := []struct {
		name       string
		tamper     string // file whose first byte is changed, or ""
		args       []string
		wantCode   int
		wantStdout []string
	}{
		{"matches", "", nil, 0, []string{"matches manifest.json"}},
		{"json", "", []string{"--output", "json"}, 0, []string{`"match": true`}},
		{"tampered root disk", build.RootFile, nil, exitMismatch, []string{"MISMATCH root.img", "MISMATCH root image"}},
		{"tampered debian initrd", build.DebianDir + "/" + build.InitrdFile, nil, exitMismatch, []string{"MISMATCH debian/initrd.img", "MISMATCH debian emulated measurement"}},
		{"tampered kernel json", build.KernelFile, []string{"--output", "json"}, exitMismatch, []string{`"match": false`, "vmlinuz"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, want := imageDir(t)
			if tt.tamper != "" {
				p := filepath.Join(dir, tt.tamper)
				b, _ := os.ReadFile(p)
				b[0] ^= 0xff
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"measure", "--dir", dir}, tt.args...), &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, stderr.String())
			}
			if tt.tamper == "" && !strings.Contains(stdout.String(), want) {
				t.Errorf("stdout lacks the measurement %s:\n%s", want, stdout.String())
			}
			for _, w := range tt.wantStdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			if slices.Contains(tt.args, "json") {
				// The result says match: false; no error object follows it.
				testutil.OneJSONObject(t, stdout.String())
				if stderr.Len() != 0 {
					t.Errorf("stderr %q, want nothing with --output json", stderr.String())
				}
			}
		})
	}
}

// TestJSONErrors: with -o json a failure is one JSON object on stdout,
// {"error", "hint"}, and nothing on stderr; the exit code is as in text.
func TestJSONErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		hint string
	}{
		{"unknown flag", []string{"measure", "-o", "json", "--bogus"}, exitError, "run 'cloak-image --help' for usage"},
		{"unknown command", []string{"-o", "json", "bogus"}, exitError, "run 'cloak-image --help' for usage"},
		{"failure", []string{"measure", "-o", "json", "--tee", "sgx"}, exitError, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			obj := testutil.OneJSONObject(t, stdout.String())
			msg, _ := obj["error"].(string)
			hint, hasHint := obj["hint"].(string)
			if code != tc.code || stderr.Len() != 0 || msg == "" || hint != tc.hint || hasHint != (tc.hint != "") {
				t.Errorf("exit %d (want %d), stdout %s, stderr %q; want error and hint %q", code, tc.code, stdout.String(), stderr.String(), tc.hint)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"build"}, "--out is required"},
		{[]string{"measure"}, "--dir or --tee is required"},
		{[]string{"measure", "--dir", ".", "--tee", "snp"}, "give one of them"},
		{[]string{"measure", "--tee", "sev"}, `--tee "sev": want snp or tdx`},
		{[]string{"measure", "--tee", "snp", "--firmware", "f", "--kernel", "k", "--cpu-type", "EPYC-v4"}, "--vcpus is required"},
		{[]string{"measure", "--tee", "snp", "--vcpus", "1", "--memory", "2G"}, "--memory is a tdx setting"},
		{[]string{"measure", "--tee", "snp", "--vcpus", "1", "--cpu-type", "EPYC-v4", "--guest-features", "zz"}, "want a hex number"},
		{[]string{"measure", "--tee", "snp", "--vcpus", "1", "--kernel", "k", "--cpu-type", "EPYC-v4"}, "--firmware and --kernel are required"},
		{[]string{"measure", "--tee", "snp", "--vcpus", "1", "--cpu-type", "EPYC-v4", "--cpu-signature", "0xa00f11"}, "not both"},
		{[]string{"measure", "--tee", "snp", "--vcpus", "1"}, "give --cpu-type"},
		{[]string{"measure", "--tee", "snp", "--vcpus", "1", "--cpu-signature", "zz"}, "want the hex CPUID leaf 1 EAX"},
		{[]string{"measure", "--tee", "snp", "--vcpus", "1", "--firmware", "/nonexistent", "--kernel", "k", "--cpu-type", "EPYC-v4"}, "read firmware"},
		{[]string{"measure", "--tee", "tdx", "--firmware", "f", "--kernel", "k"}, "--memory is required"},
		{[]string{"measure", "--tee", "tdx", "--memory", "2X"}, `memory "2X"`},
		{[]string{"measure", "--tee", "tdx", "--memory", "2G", "--vcpus", "2"}, "--vcpus is an snp setting"},
		{[]string{"measure", "--dir", "/nonexistent"}, "read manifest"},
		{[]string{"build-trivial", "--init", "x"}, "--init and --out are required"},
		{[]string{"measure", "--dir", ".", "--output", "yaml"}, "want text or json"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tt.args, &stdout, &stderr); code != exitError {
				t.Fatalf("exit %d, want %d", code, exitError)
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("stderr = %q, want %q", stderr.String(), tt.wantErr)
			}
		})
	}
}

func TestBuildTrivial(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "trivial.img")
	script := filepath.Join(dir, "init.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"build-trivial", "--init", script, "--out", out}, &stdout, &stderr); code != exitError {
		t.Fatalf("a shell script as init: exit %d, want %d", code, exitError)
	}
	// The test binary is static or not depending on the toolchain's cgo
	// setting: either it becomes a zstd initrd or it is refused by name.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	switch code := run(context.Background(), []string{"build-trivial", "--init", self, "--out", out}, &stdout, &stderr); code {
	case 0:
		img, err := os.ReadFile(out)
		if err != nil || !bytes.HasPrefix(img, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			t.Fatalf("%s is not a zstd initrd: %v", out, err)
		}
	default:
		if !strings.Contains(stderr.String(), "dynamically linked") {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	}
}

// TestEmulatedRoot: the chain is created once and printed as the PEM a KBS
// takes with --snp-extra-root (ASK then ARK); a second call prints the same.
func TestEmulatedRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "emulated-snp")
	var first, second, stderr bytes.Buffer
	if code := run(context.Background(), []string{"emulated-root", "--dir", dir}, &first, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var names []string
	for rest := first.Bytes(); ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, c.Subject.CommonName)
	}
	if len(names) != 2 || names[0] != "SEV-Milan" || names[1] != "ARK-Milan" {
		t.Errorf("chain %v, want the ASK (SEV-Milan) then the ARK (ARK-Milan)", names)
	}
	if code := run(context.Background(), []string{"emulated-root", "--dir", dir}, &second, &stderr); code != 0 || !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Errorf("second call: exit %d, same chain %v", code, bytes.Equal(first.Bytes(), second.Bytes()))
	}
	var out bytes.Buffer
	if code := run(context.Background(), []string{"emulated-root", "--dir", dir, "--output", "json"}, &out, &stderr); code != 0 || !strings.Contains(out.String(), `"chip_id"`) {
		t.Errorf("json: exit %d %s", code, out.String())
	}
}

// launchFiles writes the known-answer inputs of measurements/snp and
// measurements/tdx next to the cached Debian firmware, or skips.
func launchFiles(t *testing.T, fwName string) (fw, kernel, initrd string) {
	t.Helper()
	home, _ := os.UserHomeDir()
	fw = filepath.Join(home, ".cache/cloak/ovmf-2026.08+ds-2", fwName)
	if _, err := os.Stat(fw); err != nil {
		t.Skipf("%s absent: run `make vm-deps`", fw)
	}
	dir := t.TempDir()
	kernel, initrd = filepath.Join(dir, "kernel"), filepath.Join(dir, "initrd")
	if err := os.WriteFile(kernel, kat.Stream("kernel", 1048675), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, kat.Stream("initrd", 65543), 0o644); err != nil {
		t.Fatal(err)
	}
	return fw, kernel, initrd
}

// The expected values are the sev-snp-measure known answers of
// measurements/snp (debianOVMFCases), so the command adds nothing to them.
func TestMeasureSNP(t *testing.T) {
	fw, kernel, initrd := launchFiles(t, "OVMF.amdsev.fd")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--vcpus", "64", "--cpu-type", "EPYC-Genoa"}, "snp_launch_measurement 8118cedf312aacebca58c8d4c87543d39be46bbd69b2d5dce8b7e4cd323041531fcf19459db97794fcb7ade4c9d263cb\n"},
		{[]string{"--vcpus", "2", "--cpu-type", "EPYC-Milan", "--guest-features", "0x21"}, "snp_launch_measurement 8f9177d7cef996a53a073598e7b3345e68924681849bf69515fe7a5a4a2bbd7c7f2c09eea4494f0f363eaec4b9df3c05\n"},
		{[]string{"--vcpus", "1", "--cpu-type", "EPYC-v4", "--cmdline", ""}, "snp_launch_measurement 7209b6f34ddf2f22428bf9560424ec416ac613b832d35d5429232770c6fb5eb970a47b5004940710c0be059af698cc00\n"},
		{[]string{"--vcpus", "2", "--cpu-signature", "0xa10f11"}, "snp_launch_measurement b7b3f69152e67a992012949cc61f4805d0be50a756e11210294b2285c1cae73c56e345235bb14b12c8228d1ee04b334c\n"},
		{[]string{"--vcpus", "4", "--cpu-type", "EPYC-Genoa", "--initrd", initrd, "--cmdline", "console=ttyS0 root=/dev/vda ro"}, "snp_launch_measurement e21ee48c462a131ce698efafeb2d5c3ef7d785c493327b19da687e3e5e49129331e5f53af0cd728ee99b3f4061900ad5\n"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"measure", "--tee", "snp", "--firmware", fw, "--kernel", kernel}, tt.args...)
		if code := run(context.Background(), args, &stdout, &stderr); code != 0 || stdout.String() != tt.want {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", tt.args, code, stdout.String(), stderr.String(), tt.want)
		}
	}
	var stdout, stderr bytes.Buffer
	args := []string{"measure", "--tee", "snp", "--firmware", fw, "--kernel", kernel, "--vcpus", "1", "--cpu-type", "EPYC-Milan", "-o", "json"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r launch.Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Values) != 1 || r.Values[0].Name != "snp_launch_measurement" ||
		r.Values[0].Value != "95733f44ff36b1df4383a1823758fe4839e4bbab2b9b2609e0a88b7c1286ae569bbb25e3fad90fee07e7e59d4763468c" ||
		r.FirmwareSHA256 != "3e4fd0b3fe3b2dbe481c3d9e99418a034174f26cbe1f55aa212b0f18c12d2d6f" || r.Config.VCPUs != 1 || r.Config.GuestFeatures != 1 {
		t.Errorf("json = %s", stdout.String())
	}
}

func TestMeasureTDX(t *testing.T) {
	fw, kernel, _ := launchFiles(t, "OVMF.inteltdx.fd")
	var stdout, stderr bytes.Buffer
	// The pseudo-random kernel is no PE image: the error must say so.
	if code := run(context.Background(), []string{"measure", "--tee", "tdx", "--firmware", fw, "--kernel", kernel, "--memory", "2G"}, &stdout, &stderr); code != exitError || !strings.Contains(stderr.String(), "not a PE/COFF (EFI stub) image") {
		t.Errorf("non-PE kernel: exit %d, stderr %q", code, stderr.String())
	}
	home, _ := os.UserHomeDir()
	real := filepath.Join(home, ".cache/cloak/kernel/6.12.95-1~bpo12+1/root/boot/vmlinuz-6.12.95+deb12-cloud-amd64")
	if _, err := os.Stat(real); err != nil {
		t.Skipf("%s absent", real)
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"measure", "--tee", "tdx", "--firmware", fw, "--kernel", real, "--memory", "2G", "-o", "json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r launch.Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, v := range r.Values {
		names[v.Name] = v.Value
	}
	// tdx_mr_td: measurements/tdx's reproduce-mr known answer for Debian's TDVF.
	if names["tdx_mr_td"] != "a7a1f751abc454f9cbab198ca8d2edb2821935df525c74182b5e776cb0929e8c59aefecce725b0d08a5e9d3d3183bd08" ||
		len(names["tdx_rtmr1"]) != 96 || len(names["tdx_rtmr2"]) != 96 || len(r.NotComputed) != 2 || !strings.HasPrefix(r.NotComputed[0], "tdx_rtmr0") {
		t.Errorf("json = %s", stdout.String())
	}
}

func TestSign(t *testing.T) {
	dir, measurement := imageDir(t)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)

	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"sign", "--dir", dir, "--sign-key", keyFile}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, build.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	v, err := bundle.Verify(b, []crypto.PublicKey{key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Document.Values) != 1 || v.Document.Values[0].Value != measurement || v.Document.Values[0].Name != "snp_launch_measurement" {
		t.Errorf("signed %+v", v.Document)
	}
	// A tampered image is not signed.
	os.WriteFile(filepath.Join(dir, build.KernelFile), []byte("other"), 0o644)
	stderr.Reset()
	if code := run(context.Background(), []string{"sign", "--dir", dir, "--sign-key", keyFile, "--out", filepath.Join(t.TempDir(), "x.cose")}, &stdout, &stderr); code != exitError || !strings.Contains(stderr.String(), "does not match its manifest") {
		t.Errorf("tampered image: exit %d, %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"sign", "--dir", dir}, &stdout, &stderr); code != exitError || !strings.Contains(stderr.String(), "--sign-key are required") {
		t.Errorf("no key: exit %d, %s", code, stderr.String())
	}
}

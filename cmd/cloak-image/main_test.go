package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/measurements"
)

// imageDir writes a small image directory with a correct manifest.
func imageDir(t *testing.T) (dir, measurement string) {
	t.Helper()
	dir = t.TempDir()
	kernel, initrd := []byte("kernel bytes"), []byte("initrd bytes")
	art := func(b []byte) build.Artifact {
		s256, s384 := sha256.Sum256(b), sha512.Sum384(b)
		return build.Artifact{Size: int64(len(b)), SHA256: hex.EncodeToString(s256[:]), SHA384: hex.EncodeToString(s384[:])}
	}
	measurement = hex.EncodeToString(measurements.EmulatedLaunchDigest(kernel, initrd, build.Cmdline))
	m := build.Manifest{
		Schema: build.Schema, Kernel: art(kernel), Initrd: art(initrd), Cmdline: build.Cmdline,
		Measurements: build.Measurements{Emulated: measurement},
	}
	mb, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{build.KernelFile: kernel, build.InitrdFile: initrd, build.ManifestFile: mb} {
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
		{"tampered initrd", build.InitrdFile, nil, exitMismatch, []string{"MISMATCH initrd.img", "MISMATCH emulated measurement"}},
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
		})
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"build"}, "--out is required"},
		{[]string{"measure"}, "--dir is required"},
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

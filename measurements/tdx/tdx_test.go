package tdx

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloak-containers/cloak/internal/kat"
)

var katDump = flag.String("tdx-kat-dump", "", "write the synthetic known-answer inputs (firmware.fd, kernel.efi, initrd) into this directory")

var (
	katInitrd  = kat.Stream("initrd", 65543)
	katCmdline = "console=ttyS0 root=/dev/vda ro"
)

func TestDumpKATInputs(t *testing.T) {
	if *katDump == "" {
		t.Skip("only with -tdx-kat-dump DIR")
	}
	for name, b := range map[string][]byte{"firmware.fd": syntheticFirmware(syntheticSections), "kernel.efi": syntheticKernel(), "initrd": katInitrd} {
		if err := os.WriteFile(filepath.Join(*katDump, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func hexs(b [48]byte) string { return hex.EncodeToString(b[:]) }

// Known answers on the synthetic inputs. No independent TDX tool runs as is
// here (virtee/tdx-measure needs crates.io; scrtlabs/reproduce-mr needs
// QEMU ACPI templates for RTMR0), so the values come from
// scrtlabs/reproduce-mr's own functions (commit ec3ff4e, Go, with
// github.com/foxboron/go-uefi's Authenticode), called from a small driver
// outside this repository over the files TestDumpKATInputs writes:
//
//	mrtd  = parseTdvfMetadata(fw).computeMrtd(fw, mrtdVariantSinglePass)   // upstream KVM order
//	auth  = authenticode.Parse(kernel).Hash(crypto.SHA384)                 // unpatched: etc/boot/kernel
//	rtmr1 = measureLog(1, [auth, "Calling EFI Application...", sep, "Exit Boot Services ..." x2])
//	rtmr2 = measureLog(2, [measureTdxKernelCmdline(cmdline + " initrd=initrd"), sha384(initrd)])
//	legacy rtmr1 = the same with MeasureTdxQemuKernelImageData(kernel, len(initrd), 2048 MiB, 0x28000)
//
// composed as virtee/tdx-measure's measure_rtmr1_direct / measure_rtmr2_direct
// (src/kernel.rs) do for OVMF >= 2025.05.
const (
	synMRTD        = "50f4b082caef2ef490dab7ec3769bab426a2cbc27573472889378692a747a653ce01bb9bc361644892e4f3de53220359"
	synAuth        = "7b589bf126291ccc0ec9239d95819fa738fdd4606cdf590bef02b1aaf1e27c26715ffbf879e54517ddb22c7c4753f56e"
	synRTMR1       = "7b0cb6705d6d64d0521752f1923dd9ffa0813adf30a7ed4cdfdf785094c91086d58f417126b22edff54acfaf2ea35baf"
	synRTMR2       = "4de5c281054cba1793b25296645510b0dcfe177ed76c19c84b62dd898e486c28870d4c6b489b57628641bb8bd54e922c"
	synRTMR2NoInit = "aaa25e1defc66251f0c217577907ddf04d16c7c62148a222087fa2dc18a9cf5afd00bdab4f0400690f863dcd9b43b6b7"
	synRTMR1Legacy = "bc9d15da35fb5f73100277e5c764366d9ef6643a14d63e0f52a837fe1288c884714192884a62e7a67cfcff996fa7675a"
)

func TestKnownAnswersSynthetic(t *testing.T) {
	fw, k := syntheticFirmware(syntheticSections), syntheticKernel()
	r, err := Measure(Inputs{Firmware: fw, Kernel: k, Initrd: katInitrd, Cmdline: katCmdline, Memory: 2 << 30})
	if err != nil {
		t.Fatal(err)
	}
	auth, _ := AuthenticodeSHA384(k)
	for name, c := range map[string][2]string{
		"MRTD":         {hexs(r.MRTD), synMRTD},
		"Authenticode": {hexs(auth), synAuth},
		"RTMR1":        {hexs(r.RTMR1), synRTMR1},
		"RTMR2":        {hexs(r.RTMR2), synRTMR2},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %s, want %s", name, c[0], c[1])
		}
	}
	// Without -initrd: no " initrd=initrd" in the options, no initrd event.
	r2, _ := Measure(Inputs{Firmware: fw, Kernel: k, Cmdline: katCmdline})
	if hexs(r2.RTMR2) != synRTMR2NoInit || len(r2.RTMR2Events) != 1 {
		t.Errorf("RTMR2 without initrd = %s (%d events), want %s", hexs(r2.RTMR2), len(r2.RTMR2Events), synRTMR2NoInit)
	}
	if r2.RTMR1 != r.RTMR1 {
		t.Error("RTMR1 of the unpatched kernel depends on the initrd")
	}
	rl, err := Measure(Inputs{Firmware: fw, Kernel: k, Initrd: katInitrd, Cmdline: katCmdline, Memory: 2 << 30, LegacySetupHeader: true})
	if err != nil {
		t.Fatal(err)
	}
	if hexs(rl.RTMR1) != synRTMR1Legacy {
		t.Errorf("legacy RTMR1 = %s, want %s", hexs(rl.RTMR1), synRTMR1Legacy)
	}
	rl4, _ := Measure(Inputs{Firmware: fw, Kernel: k, Initrd: katInitrd, Memory: 1 << 30, LegacySetupHeader: true})
	if rl4.RTMR1 == rl.RTMR1 {
		t.Error("legacy RTMR1 does not depend on the memory size")
	}
}

const debianTDVFSHA256 = "a265075b4147a096109e501e76196df1ec8a18659c26f7401492c597ec88f312"

// The MRTD of Debian's OVMF.inteltdx.ms.fd 2026.08+ds-2 (cached by
// `make vm-deps` as OVMF.inteltdx.fd), from the same reproduce-mr functions.
const debianMRTD = "a7a1f751abc454f9cbab198ca8d2edb2821935df525c74182b5e776cb0929e8c59aefecce725b0d08a5e9d3d3183bd08"

func TestKnownAnswerDebianTDVF(t *testing.T) {
	p := os.Getenv("CLOAK_OVMF_INTELTDX")
	if p == "" {
		home, _ := os.UserHomeDir()
		p = filepath.Join(home, ".cache/cloak/ovmf-2026.08+ds-2/OVMF.inteltdx.fd")
	}
	fw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s absent: run `make vm-deps` to fetch Debian's ovmf-inteltdx 2026.08+ds-2 (synthetic known answers still run)", p)
	}
	if err != nil {
		t.Fatal(err)
	}
	if s := sha256.Sum256(fw); hex.EncodeToString(s[:]) != debianTDVFSHA256 {
		t.Fatalf("%s has sha256 %x; the known answer is for ovmf-inteltdx 2026.08+ds-2 (%s)", p, s, debianTDVFSHA256)
	}
	m, err := MRTD(fw)
	if err != nil {
		t.Fatal(err)
	}
	if hexs(m) != debianMRTD {
		t.Errorf("MRTD = %x, want %s", m, debianMRTD)
	}
}

func TestMRTDOpsOrder(t *testing.T) {
	fw := syntheticFirmware(syntheticSections)
	ops := MRTDOps(fw, syntheticSections)
	// BFV: 0x18 pages x (1 add + 16 extends); the rest: adds only.
	wantLen := 0x18*17 + (0x8000+0x10000+0x2000+0x6000)/pageSize
	if len(ops) != wantLen {
		t.Fatalf("%d operations, want %d", len(ops), wantLen)
	}
	if ops[0].Kind != OpPageAdd || ops[0].GPA != 0xfffe8000 || ops[1].Kind != OpExtend || ops[1].GPA != 0xfffe8000 ||
		ops[16].GPA != 0xfffe8f00 || ops[17].Kind != OpPageAdd || ops[17].GPA != 0xfffe9000 {
		t.Error("pages are not added then extended chunk by chunk, page by page (upstream KVM order)")
	}
	if !bytes.Equal(ops[1].Data, fw[0x8000:0x8100]) {
		t.Error("the first extend does not carry the BFV's first 256 file bytes")
	}
	aug := append([]Section(nil), syntheticSections...)
	aug[2].Attributes = AttrPageAug
	if n := len(MRTDOps(fw, aug)); n != wantLen-0x10 {
		t.Errorf("PAGE_AUG section still added: %d operations", n)
	}
	// One operation block by hand: "MEM.PAGE.ADD", GPA at 16, 128 bytes.
	var blk [128]byte
	copy(blk[:], "MEM.PAGE.ADD")
	blk[16], blk[17] = 0x00, 0x10
	if MRTDDigest([]Op{{Kind: OpPageAdd, GPA: 0x1000}}) != sha512.Sum384(blk[:]) {
		t.Error("TDH.MEM.PAGE.ADD block layout wrong")
	}
}

func TestLoadOptionsAndEvents(t *testing.T) {
	if got := LoadOptions("", false); !bytes.Equal(got, []byte{0, 0}) {
		t.Errorf("no -append: options %x, want a lone CHAR16 NUL", got)
	}
	if got := LoadOptions("a", true); !bytes.Equal(got, append([]byte("a\x00 \x00i\x00n\x00i\x00t\x00r\x00d\x00=\x00i\x00n\x00i\x00t\x00r\x00d\x00"), 0, 0)) {
		t.Errorf("options %q", got)
	}
	ev := []Event{{Digest: [48]byte{1}}, {Digest: [48]byte{2}}}
	r0 := sha512.Sum384(append(make([]byte, 48), ev[0].Digest[:]...))
	if Extend(ev) != sha512.Sum384(append(r0[:], ev[1].Digest[:]...)) {
		t.Error("Extend is not SHA-384(RTMR || digest) from zero")
	}
}

func TestOneChangedByteChangesTheValue(t *testing.T) {
	fw, k := syntheticFirmware(syntheticSections), syntheticKernel()
	base := Inputs{Firmware: fw, Kernel: k, Initrd: katInitrd, Cmdline: katCmdline}
	ref, err := Measure(base)
	if err != nil {
		t.Fatal(err)
	}
	same, _ := Measure(base)
	if same.MRTD != ref.MRTD || same.RTMR1 != ref.RTMR1 || same.RTMR2 != ref.RTMR2 {
		t.Fatal("same inputs, different values")
	}
	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
	check := func(name string, in Inputs, reg func(*Registers) [48]byte) {
		r, err := Measure(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if reg(r) == reg(ref) {
			t.Errorf("one changed byte of the %s left its register unchanged", name)
		}
	}
	mrtd := func(r *Registers) [48]byte { return r.MRTD }
	rtmr1 := func(r *Registers) [48]byte { return r.RTMR1 }
	rtmr2 := func(r *Registers) [48]byte { return r.RTMR2 }
	check("firmware BFV", Inputs{Firmware: flip(fw, 0x8000+77), Kernel: k, Initrd: katInitrd, Cmdline: katCmdline}, mrtd)
	check("kernel section", Inputs{Firmware: fw, Kernel: flip(k, 0x3000), Initrd: katInitrd, Cmdline: katCmdline}, rtmr1)
	check("kernel trailer", Inputs{Firmware: fw, Kernel: flip(k, 0x6001), Initrd: katInitrd, Cmdline: katCmdline}, rtmr1)
	check("initrd", Inputs{Firmware: fw, Kernel: k, Initrd: flip(katInitrd, 5), Cmdline: katCmdline}, rtmr2)
	check("cmdline", Inputs{Firmware: fw, Kernel: k, Initrd: katInitrd, Cmdline: "console=ttyS1 root=/dev/vda ro"}, rtmr2)
	// The CFV (variables) is not measured into MRTD: TDVF measures it into RTMR0.
	r, _ := Measure(Inputs{Firmware: flip(fw, 10), Kernel: k})
	if r.MRTD != ref.MRTD {
		t.Error("a byte of the unmeasured CFV changed MRTD")
	}
}

func TestRefusals(t *testing.T) {
	fw, k := syntheticFirmware(syntheticSections), syntheticKernel()
	short := append([]Section(nil), syntheticSections...)
	short[0].RawDataSize = 0x1000
	for name, c := range map[string]struct {
		in Inputs
		is error
	}{
		"no kernel":        {Inputs{Firmware: fw}, ErrInput},
		"not a PE":         {Inputs{Firmware: fw, Kernel: kat.Stream("x", 8192)}, ErrNotPE},
		"legacy no memory": {Inputs{Firmware: fw, Kernel: k, LegacySetupHeader: true}, ErrInput},
		"SNP firmware":     {Inputs{Firmware: make([]byte, 8192), Kernel: k}, ErrFirmware},
		"short BFV":        {Inputs{Firmware: syntheticFirmware(short), Kernel: k}, ErrFirmware},
		"huge initrd":      {Inputs{Firmware: fw, Kernel: k, Initrd: make([]byte, 64<<20), Memory: 64 << 20, LegacySetupHeader: true}, ErrKernel},
	} {
		if _, err := Measure(c.in); !errors.Is(err, c.is) {
			t.Errorf("%s: err %v, want %v", name, err, c.is)
		}
	}
}

func FuzzParseFirmware(f *testing.F) {
	f.Add(syntheticFirmware(syntheticSections)[syntheticFWSize-0x1000:])
	f.Fuzz(func(t *testing.T, b []byte) {
		if secs, err := ParseFirmware(b); err == nil {
			_ = MRTDOps(b, secs)
		}
	})
}

func FuzzAuthenticode(f *testing.F) {
	f.Add(syntheticKernel())
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = AuthenticodeSHA384(b)
	})
}

// Debian's signed cloud kernel (linux-image-6.12.95+deb12-cloud-amd64 from
// bookworm-backports, cached by the guest-image build), a real bzImage with a
// certificate table. Its known answers are from the reproduce-mr driver
// above, run with initrd = kat.Stream("initrd", 65543), cmdline
// "console=ttyS0", 2048 MiB.
const (
	debianKernelPath   = ".cache/cloak/kernel/6.12.95-1~bpo12+1/root/boot/vmlinuz-6.12.95+deb12-cloud-amd64"
	debianKernelSHA256 = "fadf27c4528461030ddff1d20e6622f76e1e007f7c64796f5ad9b71e37267a6f"
	debianKernelAuth   = "1cb4acc80763825edf91bcdadba215a788ad2ed8c950a6c45a7243033ca9134d16dcfc6c4de536619940f8edaf50ab09"
	debianRTMR1        = "3517a9ab46f1a47867535123d5df67e62920597b72d95e7b88010ceede99a2f5332b0833dc52bf031fc7d6fa5d1f639c"
	debianRTMR2        = "aaef2d95e6720be01f0953439cf18ba1e34ec1aeb55dd299970cf6ee5106a86374cffd712cec7c5ab5ba82cf82c58dd1"
	debianRTMR1Legacy  = "e3e4927f738b6f06f8585822fc33fd75de3ef75327dbccd2f297286ff7d33a35d00579167f28e4ff950087491d48ebf2"
)

func TestKnownAnswersDebianKernel(t *testing.T) {
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, debianKernelPath)
	k, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s absent: the guest-image build (make image) caches it", p)
	}
	if err != nil {
		t.Fatal(err)
	}
	if s := sha256.Sum256(k); hex.EncodeToString(s[:]) != debianKernelSHA256 {
		t.Skipf("%s has sha256 %x, the known answers are for %s", p, s, debianKernelSHA256)
	}
	auth, err := AuthenticodeSHA384(k)
	if err != nil || hexs(auth) != debianKernelAuth {
		t.Errorf("Authenticode = %x (%v), want %s", auth, err, debianKernelAuth)
	}
	fw := syntheticFirmware(syntheticSections)
	for _, legacy := range []bool{false, true} {
		r, err := Measure(Inputs{Firmware: fw, Kernel: k, Initrd: katInitrd, Cmdline: "console=ttyS0", Memory: 2 << 30, LegacySetupHeader: legacy})
		if err != nil {
			t.Fatal(err)
		}
		want1 := map[bool]string{false: debianRTMR1, true: debianRTMR1Legacy}[legacy]
		if hexs(r.RTMR1) != want1 || hexs(r.RTMR2) != debianRTMR2 {
			t.Errorf("legacy=%v: RTMR1 %x RTMR2 %x, want %s %s", legacy, r.RTMR1, r.RTMR2, want1, debianRTMR2)
		}
	}
}

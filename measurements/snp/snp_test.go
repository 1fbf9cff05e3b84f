package snp

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-sev-guest/abi"

	"github.com/cloak-containers/cloak/internal/kat"
)

var katDump = flag.String("snp-kat-dump", "", "write the synthetic known-answer inputs (firmware.fd, kernel, initrd) into this directory, for sev-snp-measure")

// The known-answer inputs: a 1 MiB + 99 byte pseudo-random "kernel" and a
// 64 KiB + 7 byte "initrd" (kat.Stream, so sev-snp-measure can hash the same
// files), and one command line.
var (
	katKernel  = kat.Stream("kernel", 1048675)
	katInitrd  = kat.Stream("initrd", 65543)
	katCmdline = "console=ttyS0 root=/dev/vda ro"
)

type katCase struct {
	cpu      CPUType
	vcpus    int
	features uint64
	kernel   bool
	initrd   bool
	cmdline  string
	want     string
}

func (c katCase) inputs(fw []byte) Inputs {
	in := Inputs{Firmware: fw, VCPUs: c.vcpus, CPU: c.cpu, GuestFeatures: c.features, Cmdline: c.cmdline}
	if c.kernel {
		in.Kernel = katKernel
	}
	if c.initrd {
		in.Initrd = katInitrd
	}
	return in
}

func runKAT(t *testing.T, fw []byte, cases []katCase) {
	t.Helper()
	for _, c := range cases {
		got, err := Measure(c.inputs(fw))
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		if hex.EncodeToString(got) != c.want {
			t.Errorf("%s %d vCPUs features %#x kernel=%v initrd=%v cmdline=%q:\n got %x\nwant %s", c.cpu, c.vcpus, c.features, c.kernel, c.initrd, c.cmdline, got, c.want)
		}
	}
}

// Known answers on Debian's OVMF.amdsev.fd 2026.08+ds-2 (sha256
// 3e4fd0b3fe3b2dbe481c3d9e99418a034174f26cbe1f55aa212b0f18c12d2d6f, fetched by
// `make vm-deps`), from virtee/sev-snp-measure at commit 8f2b337 run with
// Debian 12's python3 3.11 + python3-cryptography 38:
//
//	python3 kat.py kernel 1048675 >kernel; python3 kat.py initrd 65543 >initrd   # kat.Stream
//	sev-snp-measure.py --mode snp --ovmf OVMF.amdsev.fd --vcpus N --vcpu-type CPU \
//	    [--guest-features 0x21] --kernel kernel [--initrd initrd --append 'console=ttyS0 root=/dev/vda ro']
//
// and without --kernel for the no-kernel case.
var debianOVMFCases = []katCase{
	{EPYCv4, 1, 0x1, true, false, "", "7209b6f34ddf2f22428bf9560424ec416ac613b832d35d5429232770c6fb5eb970a47b5004940710c0be059af698cc00"},
	{EPYCv4, 2, 0x1, true, false, "", "8c656cf0c5cf6847ac3e7d739e1bc6cc1e7eed006d45533764c5f4243d0796c2a61f6487499e7fd9bcf7a379ba321e31"},
	{EPYCv4, 64, 0x1, true, false, "", "fa225cdb05231fe4f5a20b629369893370c32973be0d5bb2c7c0ea7a3e7f7995764a47f0e2196807875f466ec2a7505b"},
	{EPYCMilan, 1, 0x1, true, false, "", "95733f44ff36b1df4383a1823758fe4839e4bbab2b9b2609e0a88b7c1286ae569bbb25e3fad90fee07e7e59d4763468c"},
	{EPYCMilan, 2, 0x1, true, false, "", "e507d0d53cd69dc0bf8bc9fca929bae2001f76b99618f452bfdc6cd0314e6ed2e55bb35dbe5293137401545e5626979e"},
	{EPYCMilan, 64, 0x1, true, false, "", "06212ad96518f7b07dc913b2c703909ab9fde13228cc88d3750904f9dd8b896ad3e5168858563e9a7c79d07e89d80d92"},
	{EPYCGenoa, 1, 0x1, true, false, "", "cda7d0f634dc7be46d719dcde0a18e4834a1f3d014fae76a26a06a5504aabdc9fe194391eadf2351ad6b7d337e7ae985"},
	{EPYCGenoa, 2, 0x1, true, false, "", "40c7cd9c8570cdfb4e5bf9f1ac18373e33718b5c8b794866dc714801613134b172f489c5f458b55e919225e8ca2bacc9"},
	{EPYCGenoa, 64, 0x1, true, false, "", "8118cedf312aacebca58c8d4c87543d39be46bbd69b2d5dce8b7e4cd323041531fcf19459db97794fcb7ade4c9d263cb"},
	{EPYCMilan, 2, 0x21, true, false, "", "8f9177d7cef996a53a073598e7b3345e68924681849bf69515fe7a5a4a2bbd7c7f2c09eea4494f0f363eaec4b9df3c05"},
	{EPYCGenoa, 4, 0x1, true, true, katCmdline, "e21ee48c462a131ce698efafeb2d5c3ef7d785c493327b19da687e3e5e49129331e5f53af0cd728ee99b3f4061900ad5"},
	{EPYCv4, 1, 0x1, false, false, "", "d74bd3ea40b240c3228edc5177ce6193561ebff633dbd0be76d6c143b876d65102425c0e2e8a930857c48daa5eacda58"},
}

const debianOVMFSHA256 = "3e4fd0b3fe3b2dbe481c3d9e99418a034174f26cbe1f55aa212b0f18c12d2d6f"

// debianOVMF returns the cached OVMF.amdsev.fd, or skips: only `make
// vm-deps` (run by .ci/run) fetches it.
func debianOVMF(t *testing.T) []byte {
	t.Helper()
	p := os.Getenv("CLOAK_OVMF_AMDSEV")
	if p == "" {
		home, _ := os.UserHomeDir()
		p = filepath.Join(home, ".cache/cloak/ovmf-2026.08+ds-2/OVMF.amdsev.fd")
	}
	fw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s absent: run `make vm-deps` to fetch Debian's ovmf-amdsev 2026.08+ds-2 (synthetic-firmware known answers still run)", p)
	}
	if err != nil {
		t.Fatal(err)
	}
	if s := sha256.Sum256(fw); hex.EncodeToString(s[:]) != debianOVMFSHA256 {
		t.Fatalf("%s has sha256 %x; the known answers are for ovmf-amdsev 2026.08+ds-2 (%s)", p, s, debianOVMFSHA256)
	}
	return fw
}

func TestKnownAnswersDebianOVMF(t *testing.T) {
	fw := debianOVMF(t)
	runKAT(t, fw, debianOVMFCases)
	// -cpu host on a Genoa B1 host (family 25, model 17, stepping 1):
	// sev-snp-measure.py ... --vcpus 2 --vcpu-sig 0xa10f11 --kernel kernel
	// (the same with --vcpu-family 25 --vcpu-model 17 --vcpu-stepping 1).
	got, err := Measure(Inputs{Firmware: fw, Kernel: katKernel, VCPUs: 2, CPUSignature: abi.FmsToCpuid1Eax(25, 17, 1), GuestFeatures: 1})
	const want = "b7b3f69152e67a992012949cc61f4805d0be50a756e11210294b2285c1cae73c56e345235bb14b12c8228d1ee04b334c"
	if err != nil || hex.EncodeToString(got) != want {
		t.Errorf("CPU signature 0xa10f11: %x (%v), want %s", got, err, want)
	}
}

// Known answers on syntheticFirmware(syntheticSections), from the same
// sev-snp-measure run over the files that
//
//	go test ./measurements/snp -run TestDumpKATInputs -snp-kat-dump DIR
//
// writes (DIR/firmware.fd, DIR/kernel, DIR/initrd), with --ovmf DIR/firmware.fd.
var syntheticCases = []katCase{
	{EPYCv4, 1, 0x1, true, false, "", "b3862a1e788aad34125dc273a5f65404c2975e12be6ec5cd2894beb98e81ca0d967163fa7da0905a666cbfd7fb673799"},
	{EPYCMilan, 2, 0x1, true, false, "", "ee0ecfc15a0d88aeed6794d78157bd7475f5db44e37f361761ccf6db023bbd8d27820a505b1313c1322acd21c645f903"},
	{EPYCGenoa, 64, 0x1, true, false, "", "8e34d2767ae28b04a5fde1f70145b7cbe7ccbe203b8ec735bb39b9301695f2022e6ec064ca51c9205311d4625e63345d"},
	{EPYCv4, 3, 0x5, true, true, katCmdline, "9bd872eefe5f145017ab8d95dac19aacd39c9849ccc593cda259df7b5e8410d255d3b60b01f28b19f50681642add844c"},
	{EPYCGenoa, 1, 0x1, false, false, "", "4ec00789282e21e16e3da072a4d85a005d4c788510c11dd528baf8098de3e2051c1a20cf1056c0f24e52973e5f560930"},
}

func TestKnownAnswersSyntheticFirmware(t *testing.T) {
	runKAT(t, syntheticFirmware(syntheticSections), syntheticCases)
}

func TestDumpKATInputs(t *testing.T) {
	if *katDump == "" {
		t.Skip("only with -snp-kat-dump DIR")
	}
	for name, b := range map[string][]byte{"firmware.fd": syntheticFirmware(syntheticSections), "kernel": katKernel, "initrd": katInitrd} {
		if err := os.WriteFile(filepath.Join(*katDump, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestParseFirmwareSynthetic(t *testing.T) {
	f, err := ParseFirmware(syntheticFirmware(syntheticSections))
	if err != nil {
		t.Fatal(err)
	}
	if f.GPA != 1<<32-syntheticSize || f.ResetEIP != syntheticResetEIP || f.HashesTableGPA != syntheticHashesGPA {
		t.Errorf("got GPA %#x reset %#x hashes %#x", f.GPA, f.ResetEIP, f.HashesTableGPA)
	}
	if len(f.Sections) != len(syntheticSections) {
		t.Fatalf("got %d sections, want %d", len(f.Sections), len(syntheticSections))
	}
	for i, s := range f.Sections {
		if s != syntheticSections[i] {
			t.Errorf("section %d = %+v, want %+v", i, s, syntheticSections[i])
		}
	}
}

func TestHashesTableLayout(t *testing.T) {
	h := HashesOf([]byte("k"), nil, "")
	tb := h.Table()
	if len(tb) != 176 {
		t.Fatalf("table is %d bytes, want 176 (168 padded to 16)", len(tb))
	}
	// 9438d606-4f22-4cc9-b479-a793d411fd21 little-endian, length 168.
	wantHdr, _ := hex.DecodeString("06d63894224fc94cb479a793d411fd21a800")
	if !bytes.Equal(tb[:18], wantHdr) {
		t.Errorf("header %x, want %x", tb[:18], wantHdr)
	}
	empty := sha256.Sum256(nil)
	nul := sha256.Sum256([]byte{0})
	k := sha256.Sum256([]byte("k"))
	for i, want := range [][32]byte{nul, empty, k} { // cmdline, initrd, kernel
		e := tb[18+i*50:]
		if n := binary.LittleEndian.Uint16(e[16:]); n != 50 {
			t.Errorf("entry %d length %d, want 50", i, n)
		}
		if !bytes.Equal(e[18:50], want[:]) {
			t.Errorf("entry %d hash %x, want %x", i, e[18:50], want)
		}
	}
	if !bytes.Equal(tb[168:], make([]byte, 8)) {
		t.Errorf("padding %x, want zeros", tb[168:])
	}
	if h != HashesOf([]byte("k"), []byte{}, "") {
		t.Error("an empty initrd hashes differently from none; QEMU hashes both as SHA-256 of nothing")
	}
	p, ok := h.Page(0xc00)
	if !ok || !bytes.Equal(p[0xc00:0xc00+176], tb) || !bytes.Equal(p[:0xc00], make([]byte, 0xc00)) {
		t.Error("KERNEL_HASHES page does not hold the table at 0xc00 with zeros before it")
	}
	if _, ok := h.Page(pageSize - 100); ok {
		t.Error("a table that would cross the page end was accepted")
	}
}

// The VMSA digests sev-snp-measure --dump-vmsa wrote for EPYC-Milan,
// features 0x1, Debian's OVMF (reset EIP 0x80b004): vmsa0.bin (BSP) and
// vmsa1.bin (AP), as `sha384sum vmsa*.bin` printed them.
func TestVMSAPages(t *testing.T) {
	sig, _ := EPYCMilan.Signature()
	for _, c := range []struct {
		eip  uint32
		want string
	}{
		{bspEIP, "728af287318db5f3fc4d2357a969483c4225956dc555b514a78d64ee372112d13b3dca8afd02cdbd1c55697d8ce087f5"},
		{0x80b004, "24d6d6fe1cc2fd76d9504a2e411e2a1e229a6723c94521c373c21dd97514c44895fc07fea07e04b4186d90160c8dad0b"},
	} {
		p := VMSAPage(c.eip, sig, 0x1)
		if got := sha512.Sum384(p); hex.EncodeToString(got[:]) != c.want {
			t.Errorf("VMSA for EIP %#x: sha384 %x, want %s", c.eip, got, c.want)
		}
	}
	if sig != 0x00a00f11 {
		t.Errorf("EPYC-Milan signature %#x, want 0xa00f11 (family 25 model 1 stepping 1)", sig)
	}
	p := VMSAPage(0x80b004, sig, 0x21)
	if binary.LittleEndian.Uint64(p[vmsaCS+8:]) != 0x800000 || binary.LittleEndian.Uint64(p[vmsaRIP:]) != 0xb004 {
		t.Error("AP VMSA does not split the reset EIP into CS base and RIP")
	}
	if binary.LittleEndian.Uint64(p[vmsaSEVFeatures:]) != 0x21 || binary.LittleEndian.Uint64(p[vmsaRDX:]) != uint64(sig) {
		t.Error("VMSA lacks the guest features or the CPU signature")
	}
}

func TestPageInfoChaining(t *testing.T) {
	var cur [48]byte
	for i := range cur {
		cur[i] = byte(i)
	}
	p := Page{Type: PageCPUID, GPA: 0x80e000}
	info := PageInfo(cur, p)
	if len(info) != 0x70 {
		t.Fatalf("PAGE_INFO is %d bytes, want 0x70", len(info))
	}
	if !bytes.Equal(info[:48], cur[:]) || info[96] != 0x70 || info[97] != 0 || info[98] != byte(PageCPUID) ||
		binary.LittleEndian.Uint64(info[104:]) != 0x80e000 {
		t.Errorf("PAGE_INFO layout wrong: %x", info)
	}
	d1 := Digest([]Page{p})
	want := sha512.Sum384(PageInfo([48]byte{}, p))
	if d1 != want {
		t.Error("Digest of one page is not SHA-384 of its PAGE_INFO over a zero digest")
	}
	d2 := Digest([]Page{p, p})
	if d2 != sha512.Sum384(PageInfo(d1, p)) {
		t.Error("Digest does not chain DIGEST_CUR")
	}
}

func TestOneChangedByteChangesTheValue(t *testing.T) {
	fw := syntheticFirmware(syntheticSections)
	base := Inputs{Firmware: fw, Kernel: katKernel, Initrd: katInitrd, Cmdline: katCmdline, VCPUs: 2, CPU: EPYCGenoa, GuestFeatures: 1}
	ref, err := Measure(base)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Measure(base)
	if !bytes.Equal(ref, again) {
		t.Fatal("same inputs, different value")
	}
	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 1
		return c
	}
	for name, in := range map[string]Inputs{
		"firmware": {Firmware: flip(fw, 100), Kernel: katKernel, Initrd: katInitrd, Cmdline: katCmdline},
		"kernel":   {Firmware: fw, Kernel: flip(katKernel, len(katKernel)-1), Initrd: katInitrd, Cmdline: katCmdline},
		"initrd":   {Firmware: fw, Kernel: katKernel, Initrd: flip(katInitrd, 0), Cmdline: katCmdline},
		"cmdline":  {Firmware: fw, Kernel: katKernel, Initrd: katInitrd, Cmdline: "console=ttyS0 root=/dev/vdb ro"},
	} {
		in.VCPUs, in.CPU, in.GuestFeatures = base.VCPUs, base.CPU, base.GuestFeatures
		got, err := Measure(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if bytes.Equal(got, ref) {
			t.Errorf("one changed byte of the %s left the measurement unchanged", name)
		}
	}
}

func TestRefusals(t *testing.T) {
	fw := syntheticFirmware(syntheticSections)
	noHashes := syntheticFirmware(syntheticSections[:5])
	badType := syntheticFirmware(append([]Section{{0x900000, 0x1000, 7}}, syntheticSections...))
	noFooter := bytes.Clone(fw)
	copy(noFooter[len(noFooter)-50:], make([]byte, 18))
	for _, c := range []struct {
		name string
		in   Inputs
		is   error
	}{
		{"zero vCPUs", Inputs{Firmware: fw, Kernel: katKernel, CPU: EPYCv4}, ErrInput},
		{"unknown CPU", Inputs{Firmware: fw, Kernel: katKernel, VCPUs: 1, CPU: "EPYC-Turin"}, ErrInput},
		{"CPU model and signature", Inputs{Firmware: fw, Kernel: katKernel, VCPUs: 1, CPU: EPYCv4, CPUSignature: 0xa00f11}, ErrInput},
		{"cmdline without kernel", Inputs{Firmware: fw, Cmdline: "x", VCPUs: 1, CPU: EPYCv4}, ErrInput},
		{"odd firmware size", Inputs{Firmware: fw[1:], Kernel: katKernel, VCPUs: 1, CPU: EPYCv4}, ErrInput},
		{"no footer table", Inputs{Firmware: noFooter, Kernel: katKernel, VCPUs: 1, CPU: EPYCv4}, ErrFirmware},
		{"no KERNEL_HASHES", Inputs{Firmware: noHashes, Kernel: katKernel, VCPUs: 1, CPU: EPYCv4}, ErrFirmware},
		{"unknown section", Inputs{Firmware: badType, Kernel: katKernel, VCPUs: 1, CPU: EPYCv4}, ErrFirmware},
	} {
		if _, err := Measure(c.in); !errors.Is(err, c.is) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.is)
		}
	}
	// Without a kernel, a firmware without KERNEL_HASHES is fine.
	if _, err := Measure(Inputs{Firmware: noHashes, VCPUs: 1, CPU: EPYCv4}); err != nil {
		t.Errorf("no kernel, no KERNEL_HASHES: %v", err)
	}
}

func BenchmarkMeasure64(b *testing.B) {
	in := Inputs{Firmware: syntheticFirmware(syntheticSections), Kernel: katKernel, VCPUs: 64, CPU: EPYCGenoa, GuestFeatures: 1}
	for b.Loop() {
		if _, err := Measure(in); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseFirmware(f *testing.F) {
	f.Add(syntheticFirmware(syntheticSections)[syntheticSize-pageSize:])
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseFirmware(b)
	})
}

func TestMeasureVCPURangeMatchesMeasure(t *testing.T) {
	fw := syntheticFirmware(syntheticSections)
	in := Inputs{Firmware: fw, Kernel: katKernel, Initrd: katInitrd, Cmdline: katCmdline, CPU: EPYCMilan, GuestFeatures: 1}
	all, err := MeasureVCPURange(in, 64)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 64 {
		t.Fatalf("%d values, want 64", len(all))
	}
	for _, n := range []int{1, 2, 3, 64} {
		in.VCPUs = n
		want, _ := Measure(in)
		if !bytes.Equal(all[n-1], want) {
			t.Errorf("%d vCPUs: range gives %x, Measure %x", n, all[n-1], want)
		}
	}
	if bytes.Equal(all[0], all[1]) {
		t.Error("1 and 2 vCPUs measure the same")
	}
	if _, err := MeasureVCPURange(in, 0); !errors.Is(err, ErrInput) {
		t.Errorf("range 1..0: err %v", err)
	}
}

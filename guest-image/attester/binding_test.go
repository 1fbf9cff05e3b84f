package attester

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
)

// fakeSPPort is a pseudo-terminal in raw mode standing in for the guest's
// cloak.sp port: the test answers on the master side with reports whose
// HOST_DATA is hostData.
func fakeSPPort(t *testing.T, hostData [32]byte) string {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals on this machine: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave := fmt.Sprintf("/dev/pts/%d", n)
	sf, err := os.OpenFile(slave, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sf.Close() })
	tio, err := unix.IoctlGetTermios(int(sf.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	// Raw: no echo, no line editing, no newline translation.
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	if err := unix.IoctlSetTermios(int(sf.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	go func() {
		br := bufio.NewReader(master)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			if len(f) != 4 {
				// As the real SNP SP answers a PLATFORM probe.
				if len(f) > 1 {
					fmt.Fprintf(master, "ERR %s want REPORT\n", f[1])
				}
				continue
			}
			report := make([]byte, 1184)
			hex.Decode(report[0x50:0x90], []byte(f[3]))
			copy(report[0xC0:0xE0], hostData[:])
			fmt.Fprintf(master, "OK %s %s \n", f[1], base64.StdEncoding.EncodeToString(report))
		}
	}()
	return slave
}

func noSNP(t *testing.T) snp.Paths {
	dir := t.TempDir()
	return snp.Paths{ConfigfsTSM: filepath.Join(dir, "tsm"), SevPlatform: filepath.Join(dir, "p"), SevGuest: filepath.Join(dir, "sev-guest"), EmulatedSP: filepath.Join(dir, "sp")}
}

// noTEE is a configuration whose guest has no SNP source, no TPM and no
// TDX device (whatever this machine has).
func noTEE(t *testing.T) config {
	dir := t.TempDir()
	return config{
		runDir: filepath.Join(dir, "run"), snp: noSNP(t),
		tpmDevice: filepath.Join(dir, "tpmrm0"), tdxDevice: filepath.Join(dir, "tdx_guest"),
		openTPM: func(dev string) (tpmExtender, error) {
			return nil, fmt.Errorf("test opened the TPM %s it does not have", dev)
		},
	}
}

func TestCheckBinding(t *testing.T) {
	initdata := initdataWith("https://10.0.2.2:8080", "")
	digest := hostDataOf(t, initdata)

	cfg := noTEE(t)
	if tee, err := checkBinding(context.Background(), initdata, cfg); err != nil || tee != "" {
		t.Errorf("no SNP: tee %q, err %v; want default tee, no error", tee, err)
	}

	cfg.snp.EmulatedSP = fakeSPPort(t, digest)
	if tee, err := checkBinding(context.Background(), initdata, cfg); err != nil || tee != "snp" {
		t.Errorf("matching HOST_DATA: tee %q, err %v; want snp", tee, err)
	}

	changed := append([]byte("# host edit\n"), initdata...)
	_, err := checkBinding(context.Background(), changed, cfg)
	var mismatch *InitdataMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("changed initdata: err = %v, want InitdataMismatchError", err)
	}
	if mismatch.HostData != digest || mismatch.Initdata != hostDataOf(t, changed) || !strings.Contains(err.Error(), "changed the initdata after launch") {
		t.Errorf("mismatch error = %v", err)
	}
}

func TestStartRefusesMismatchedInitdata(t *testing.T) {
	cfg := fakeConfig(t, "serve")
	cfg.snp = noSNP(t)
	cfg.snp.EmulatedSP = fakeSPPort(t, sha256.Sum256([]byte("what the host launched with")))
	_, err := start(context.Background(), initdataWith("https://10.0.2.2:8080", ""), quiet, cfg)
	var mismatch *InitdataMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("start = %v, want InitdataMismatchError", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.runDir, "args")); err == nil {
		t.Error("cloak-aa was started with refused initdata")
	}
}

// fakeTPM records the digests PCR 8 is extended with.
type fakeTPM struct {
	extended [][]byte
	fail     error
}

func (f *fakeTPM) ExtendInitdata(_ context.Context, digest []byte) error {
	if f.fail != nil {
		return f.fail
	}
	f.extended = append(f.extended, digest)
	return nil
}

// withTPM gives cfg a TPM device node (a plain file) served by a fakeTPM.
func withTPM(t *testing.T, cfg *config) *fakeTPM {
	t.Helper()
	f := &fakeTPM{}
	if err := os.WriteFile(cfg.tpmDevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.openTPM = func(dev string) (tpmExtender, error) {
		if dev != cfg.tpmDevice {
			return nil, fmt.Errorf("opened %s, want %s", dev, cfg.tpmDevice)
		}
		return f, nil
	}
	return f
}

func TestBindTPM(t *testing.T) {
	ctx := context.Background()
	initdata := initdataWith("https://10.0.2.2:8080", "") // algorithm sha384
	want := sha512.Sum384(initdata)
	cfg := noTEE(t)
	f := withTPM(t, &cfg)

	if tee, err := checkBinding(ctx, initdata, cfg); err != nil || tee != "tpm" {
		t.Fatalf("TPM, no SNP: tee %q, err %v; want tpm", tee, err)
	}
	if len(f.extended) != 1 || !bytes.Equal(f.extended[0], want[:]) {
		t.Fatalf("PCR 8 extended with %x, want once with sha384(initdata) %x", f.extended, want)
	}
	// Once per boot: the same initdata again (a new sandbox in the same
	// VM) does not extend a second time.
	if tee, err := checkBinding(ctx, initdata, cfg); err != nil || tee != "tpm" {
		t.Fatalf("same initdata again: tee %q, err %v", tee, err)
	}
	if len(f.extended) != 1 {
		t.Errorf("PCR 8 extended %d times for one initdata", len(f.extended))
	}
	// Other initdata cannot be bound any more this boot.
	changed := append([]byte("# host edit\n"), initdata...)
	_, err := checkBinding(ctx, changed, cfg)
	var pcrErr *InitdataPCRError
	if !errors.As(err, &pcrErr) || !bytes.Equal(pcrErr.Bound, want[:]) || !strings.Contains(err.Error(), "restart the pod VM") {
		t.Errorf("other initdata: err = %v, want InitdataPCRError naming the bound digest", err)
	}
	if len(f.extended) != 1 {
		t.Errorf("PCR 8 extended for refused initdata")
	}

	// sha256 and sha512 documents: the digest under their own algorithm.
	for alg, sum := range map[string]func([]byte) []byte{
		"sha256": func(b []byte) []byte { s := sha256.Sum256(b); return s[:] },
		"sha512": func(b []byte) []byte { s := sha512.Sum512(b); return s[:] },
	} {
		cfg := noTEE(t)
		f := withTPM(t, &cfg)
		doc := bytes.Replace(initdata, []byte(`"sha384"`), []byte(`"`+alg+`"`), 1)
		if _, err := checkBinding(ctx, doc, cfg); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if len(f.extended) != 1 || !bytes.Equal(f.extended[0], sum(doc)) {
			t.Errorf("%s: extended with %x, want %x", alg, f.extended, sum(doc))
		}
	}
}

func TestBindTPMFailure(t *testing.T) {
	ctx := context.Background()
	initdata := initdataWith("https://10.0.2.2:8080", "")
	cfg := noTEE(t)
	f := withTPM(t, &cfg)
	f.fail = errors.New("TPM_RC_LOCALITY")
	if _, err := checkBinding(ctx, initdata, cfg); err == nil || !strings.Contains(err.Error(), "TPM_RC_LOCALITY") {
		t.Fatalf("failed extension: err = %v", err)
	}
	// The PCR's state is unknown now: no retry, no silent success.
	f.fail = nil
	if _, err := checkBinding(ctx, initdata, cfg); err == nil || !strings.Contains(err.Error(), "earlier extension") {
		t.Errorf("after a failed extension: err = %v, want a refusal", err)
	}
	if len(f.extended) != 0 {
		t.Errorf("PCR 8 extended again after a failure: %x", f.extended)
	}
}

func TestBindTPMNotUsed(t *testing.T) {
	ctx := context.Background()
	initdata := initdataWith("https://10.0.2.2:8080", "")

	// A TDX guest's TPM is not its TEE.
	cfg := noTEE(t)
	f := withTPM(t, &cfg)
	if err := os.WriteFile(cfg.tdxDevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if tee, err := checkBinding(ctx, initdata, cfg); err != nil || tee != "" || len(f.extended) != 0 {
		t.Errorf("TDX guest with a TPM: tee %q, err %v, extended %d times; want default tee, no extension", tee, err, len(f.extended))
	}

	// SEV-SNP wins over a TPM.
	cfg = noTEE(t)
	f = withTPM(t, &cfg)
	cfg.snp.EmulatedSP = fakeSPPort(t, hostDataOf(t, initdata))
	if tee, err := checkBinding(ctx, initdata, cfg); err != nil || tee != "snp" || len(f.extended) != 0 {
		t.Errorf("SNP guest with a TPM: tee %q, err %v, extended %d times; want snp, no extension", tee, err, len(f.extended))
	}
}

func TestStartWithTPM(t *testing.T) {
	cfg := fakeConfig(t, "serve")
	f := withTPM(t, &cfg)
	initdata := initdataWith("http://10.0.2.2:8080", "")
	a, err := start(context.Background(), initdata, quiet, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	args, _ := os.ReadFile(filepath.Join(cfg.runDir, "args"))
	if !strings.HasSuffix(string(args), " --tee tpm") || len(f.extended) != 1 {
		t.Errorf("args = %q, extended %d times; want --tee tpm after one extension", args, len(f.extended))
	}
}

// hostDataOf is the HOST_DATA a guest launched with initdata carries: its
// digest under its own algorithm, fitted to 32 bytes.
func hostDataOf(t *testing.T, initdata []byte) [32]byte {
	t.Helper()
	_, d, err := kbstypes.InitdataDigest(initdata)
	if err != nil {
		t.Fatal(err)
	}
	var hd [32]byte
	copy(hd[:], kbstypes.FitDigest(d, 32))
	return hd
}

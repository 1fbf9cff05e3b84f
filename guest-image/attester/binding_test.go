package attester

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

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

func TestCheckBinding(t *testing.T) {
	initdata := initdataWith("https://10.0.2.2:8080", "")
	digest := sha256.Sum256(initdata)

	paths := noSNP(t)
	if tee, err := checkBinding(context.Background(), initdata, paths); err != nil || tee != "" {
		t.Errorf("no SNP: tee %q, err %v; want default tee, no error", tee, err)
	}

	paths.EmulatedSP = fakeSPPort(t, digest)
	if tee, err := checkBinding(context.Background(), initdata, paths); err != nil || tee != "snp" {
		t.Errorf("matching HOST_DATA: tee %q, err %v; want snp", tee, err)
	}

	changed := append([]byte("# host edit\n"), initdata...)
	_, err := checkBinding(context.Background(), changed, paths)
	var mismatch *InitdataMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("changed initdata: err = %v, want InitdataMismatchError", err)
	}
	if mismatch.HostData != digest || mismatch.Initdata != sha256.Sum256(changed) || !strings.Contains(err.Error(), "changed the initdata after launch") {
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

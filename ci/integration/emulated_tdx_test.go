package integration

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"
	"time"

	emulatedtdx "github.com/cloak-containers/cloak/emulated/tdx"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	tdxverifier "github.com/cloak-containers/cloak/kbs/verifier/tdx"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// bootEmulatedTDX boots the guest image with the cloak.sp port served by
// the emulated TDX quoting service (MRTD = launch digest, MRCONFIGID =
// the launch initdata's digest), recording its answers.
func bootEmulatedTDX(t *testing.T, root *emulatedtdx.Root, launchInitdata []byte) (*qemu.VM, *recorder, []byte) {
	t.Helper()
	g, mrtd := emulatedLaunch(t)
	var launch emulatedtdx.Launch
	copy(launch.MRTD[:], mrtd)
	var err error
	if launch.MRCONFIGID, err = emulatedtdx.MRConfigIDFor(launchInitdata); err != nil {
		t.Fatal(err)
	}
	vm, rec := bootWithSPPort(t, g, emulatedtdx.New(root, launch).Serve)
	return vm, rec, mrtd
}

// TestEmulatedTDX boots the guest with the emulated TDX platform:
// CreateSandbox's initdata check makes the guest ask PLATFORM and then for a
// quote over cloak.sp; that quote verifies with the KBS's TDX verifier
// against the emulated root and the collateral directory the platform
// wrote (offline), with MRTD = launch digest and MRCONFIGID = the initdata
// digest. Initdata changed after launch is refused.
func TestEmulatedTDX(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "emulated-tdx")
	root, err := emulatedtdx.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tdxverifier.New(tdxverifier.Options{
		Collateral: collateral.New(collateral.Options{Dir: filepath.Join(dir, emulatedtdx.CollateralDir), Offline: true}),
		ExtraRoots: []*x509.Certificate{root.RootCA},
	})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("matching initdata", func(t *testing.T) {
		initdata := emulatedInitdata("launched")
		vm, rec, mrtd := bootEmulatedTDX(t, root, initdata)
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := c.CreateSandbox(ctx, sandboxRequest(initdata)); err != nil {
			t.Fatalf("CreateSandbox with the launch initdata: %v", err)
		}
		var quote []byte
		for _, a := range rec.answers() {
			if f := strings.Split(a, " "); len(f) == 3 && f[0] == "OK" && f[2] != emulatedtdx.PlatformName {
				if quote, err = base64.StdEncoding.DecodeString(f[2]); err != nil {
					t.Fatal(err)
				}
			}
		}
		if quote == nil {
			t.Fatalf("the guest asked for no quote (answers %q)", rec.answers())
		}
		claims, err := v.VerifyQuote(ctx, quote, nil, nil, nil)
		if err != nil {
			t.Fatalf("the guest's quote does not verify with the KBS verifier: %v", err)
		}
		want, err := emulatedtdx.MRConfigIDFor(initdata)
		if err != nil {
			t.Fatal(err)
		}
		if claims["emulated"] != true || claims["mr_td"] != hex.EncodeToString(mrtd) || claims["mr_config_id"] != hex.EncodeToString(want[:]) {
			t.Errorf("claims emulated %v mr_td %v mr_config_id %v, want true %x %x", claims["emulated"], claims["mr_td"], claims["mr_config_id"], mrtd, want)
		}
		if claims["report_data"] == hex.EncodeToString(make([]byte, 64)) {
			t.Error("the guest asked with all-zero report data; its check needs a fresh nonce")
		}
	})

	t.Run("initdata changed after launch", func(t *testing.T) {
		vm, _, _ := bootEmulatedTDX(t, root, emulatedInitdata("launched"))
		c := connectAgent(t, vm)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, err := c.CreateSandbox(ctx, sandboxRequest(emulatedInitdata("swapped by the host")))
		if err == nil || !strings.Contains(err.Error(), "MRCONFIGID") {
			t.Fatalf("CreateSandbox = %v, want a refusal naming MRCONFIGID", err)
		}
	})
}

package build

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cloak-containers/cloak/measurements/bundle"
	"github.com/cloak-containers/cloak/measurements/snp"
	"github.com/cloak-containers/cloak/measurements/tdx"
)

// BundleFile is the signed reference-value bundle Build writes with a
// signing key.
const BundleFile = "reference-values.cose"

// DefaultSNPMaxVCPUs is the largest vCPU count the shim launches
// (shim/config refuses more than 256): the build records the SNP
// measurement of every count up to it, as a pod annotation may pick any.
const DefaultSNPMaxVCPUs = 256

// SNPMeasurements are the SEV-SNP launch measurements of the image for one
// OVMF AMDSEV build, for each CPU model and vCPU count.
type SNPMeasurements struct {
	Firmware      FirmwareRef `json:"firmware"`
	GuestFeatures uint64      `json:"guest_features"`
	Values        []SNPValue  `json:"values"`
}

// SNPValue is the measurement of one launch configuration.
type SNPValue struct {
	CPUType     string `json:"cpu_type"`
	VCPUs       int    `json:"vcpus"`
	Measurement string `json:"measurement"`
}

// TDXMeasurements are the TDX registers of the image for one OVMF IntelTdx
// build; they depend neither on vCPUs nor on memory.
type TDXMeasurements struct {
	Firmware    FirmwareRef `json:"firmware"`
	MRTD        string      `json:"mr_td"`
	RTMR1       string      `json:"rtmr1"`
	RTMR2       string      `json:"rtmr2"`
	NotComputed string      `json:"rtmr0_not_computed"`
}

// FirmwareRef names the firmware a value was computed over.
type FirmwareRef struct {
	File   string `json:"file"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func readFirmware(path string) ([]byte, FirmwareRef, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, FirmwareRef{}, fmt.Errorf("read firmware (make vm-deps caches Debian's OVMF builds): %w", err)
	}
	s := sha256.Sum256(b)
	return b, FirmwareRef{File: filepath.Base(path), Size: int64(len(b)), SHA256: hex.EncodeToString(s[:])}, nil
}

// measureSNP computes the image's SNP measurements for every CPU model and
// every vCPU count up to maxVCPUs.
func measureSNP(fwPath string, maxVCPUs int, vmlinuz, initrd []byte, cmdline string) (*SNPMeasurements, error) {
	fw, ref, err := readFirmware(fwPath)
	if err != nil {
		return nil, err
	}
	m := &SNPMeasurements{Firmware: ref, GuestFeatures: snp.DefaultGuestFeatures}
	for _, cpu := range snp.CPUTypes() {
		all, err := snp.MeasureVCPURange(snp.Inputs{Firmware: fw, Kernel: vmlinuz, Initrd: initrd, Cmdline: cmdline,
			CPU: snp.CPUType(cpu), GuestFeatures: m.GuestFeatures}, maxVCPUs)
		if err != nil {
			return nil, fmt.Errorf("snp measurement over %s: %w", fwPath, err)
		}
		for i, d := range all {
			m.Values = append(m.Values, SNPValue{CPUType: cpu, VCPUs: i + 1, Measurement: hex.EncodeToString(d)})
		}
	}
	return m, nil
}

func measureTDX(fwPath string, vmlinuz, initrd []byte, cmdline string) (*TDXMeasurements, error) {
	fw, ref, err := readFirmware(fwPath)
	if err != nil {
		return nil, err
	}
	r, err := tdx.Measure(tdx.Inputs{Firmware: fw, Kernel: vmlinuz, Initrd: initrd, Cmdline: cmdline})
	if err != nil {
		return nil, fmt.Errorf("tdx measurement over %s: %w", fwPath, err)
	}
	return &TDXMeasurements{Firmware: ref, MRTD: hex.EncodeToString(r.MRTD[:]), RTMR1: hex.EncodeToString(r.RTMR1[:]),
		RTMR2: hex.EncodeToString(r.RTMR2[:]), NotComputed: tdx.RTMR0Reason}, nil
}

// ReferenceDocument lists the reference values of a built image, named as
// the KBS names them: the emulated platform's measurement (it reports it as
// snp_launch_measurement), each SNP measurement and the TDX registers.
func ReferenceDocument(m *Manifest) bundle.Document {
	d := bundle.Document{
		Version: bundle.Version,
		Name: fmt.Sprintf("cloak guest image, kernel %s %s config %.12s, root %.12s", m.KernelBuild.SourcePackage,
			m.KernelBuild.SourceVersion, m.KernelBuild.FragmentSHA256, m.Root.RootHash),
		// No initrd: the command line carries the root disk's root hash.
		Image: bundle.Image{KernelSHA256: m.Kernel.SHA256, Cmdline: m.Cmdline},
		Values: []bundle.Value{{Name: "snp_launch_measurement", Value: m.Measurements.Emulated,
			Config: bundle.Config{TEE: "emulated"}}},
	}
	if s := m.Measurements.SNP; s != nil {
		for _, v := range s.Values {
			d.Values = append(d.Values, bundle.Value{Name: "snp_launch_measurement", Value: v.Measurement, Config: bundle.Config{
				TEE: "snp", FirmwareSHA256: s.Firmware.SHA256, VCPUs: v.VCPUs, CPUType: v.CPUType, GuestFeatures: s.GuestFeatures}})
		}
	}
	if t := m.Measurements.TDX; t != nil {
		c := bundle.Config{TEE: "tdx", FirmwareSHA256: t.Firmware.SHA256}
		d.Values = append(d.Values,
			bundle.Value{Name: "tdx_mr_td", Value: t.MRTD, Config: c},
			bundle.Value{Name: "tdx_rtmr1", Value: t.RTMR1, Config: c},
			bundle.Value{Name: "tdx_rtmr2", Value: t.RTMR2, Config: c})
	}
	return d
}

// SignDir signs the reference values of the image in dir (its verified
// manifest.json) into out, default dir/BundleFile: an image built without a
// key, or on a machine that does not hold the key, can be signed later.
// An image whose files do not match its manifest is refused.
func SignDir(ctx context.Context, dir, out string, key crypto.Signer) (*bundle.Document, error) {
	v, err := VerifyDir(ctx, dir)
	if err != nil {
		return nil, err
	}
	if len(v.Mismatches) > 0 {
		return nil, fmt.Errorf("image in %s does not match its manifest, not signing: %v", dir, v.Mismatches)
	}
	if out == "" {
		out = filepath.Join(dir, BundleFile)
	}
	return signTo(out, v.Manifest, key)
}

func signTo(path string, m *Manifest, key crypto.Signer) (*bundle.Document, error) {
	d := ReferenceDocument(m)
	b, err := bundle.Sign(d, key)
	if err != nil {
		return nil, fmt.Errorf("sign reference values: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &d, nil
}

// writeBundle signs the manifest's reference values into DIR/BundleFile,
// or removes a stale one when there is no key: a bundle must never describe
// other artifacts than those beside it.
func writeBundle(dir string, m *Manifest, key crypto.Signer) error {
	p := filepath.Join(dir, BundleFile)
	if key == nil {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	_, err := signTo(p, m, key)
	return err
}

package snp

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"fmt"

	"github.com/google/go-sev-guest/abi"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/uuid"
)

// Fixed fields of every emulated report. They describe a plausible Milan
// platform; none of them is measured, which is why a KBS marks the evidence
// emulated.
const (
	// ReportVersion 3 carries the CPUID family/model/stepping, so verifiers
	// learn the product line from the report itself.
	ReportVersion = 3
	// GuestPolicy 0x30000: SMT allowed (bit 16), reserved bit 17 set;
	// debug and migration agents disallowed. The launcher uses the same
	// policy for real SNP guests.
	GuestPolicy uint64 = 0x30000
	// PlatformInfo: SMT enabled on the (imaginary) host.
	PlatformInfo uint64 = 0x1
	// Firmware version 1.55 build 21 as current and committed.
	fwMajor, fwMinor, fwBuild = 1, 55, 21
	// Milan B1: family 0x19, model 0x01, stepping 0x1.
	cpuFamily, cpuModel, cpuStepping = 0x19, 0x01, 0x01
)

// ReportedTCB is the TCB of every emulated report (current, committed,
// reported and launch TCB alike); the VCEK certificate names it too.
func ReportedTCB() kds.TCBParts {
	return kds.TCBParts{BlSpl: 3, TeeSpl: 0, SnpSpl: 8, UcodeSpl: 115}
}

// Launch is what the SP knows about one VM from its launch.
type Launch struct {
	// Measurement is the launch digest of the boot artifacts actually
	// started (measurements.EmulatedLaunchDigest).
	Measurement [abi.MeasurementSize]byte
	// HostData binds the initdata document (zero without one).
	HostData [abi.HostDataSize]byte
}

// HostDataFor returns HOST_DATA for an initdata document: its digest under
// its own algorithm, fitted to 32 bytes as CoCo's initdata specification
// says (kbstypes.InitdataDigest, FitDigest), or zeros when there is none
// (as QEMU leaves host-data unset).
func HostDataFor(initdata []byte) ([abi.HostDataSize]byte, error) {
	var hd [abi.HostDataSize]byte
	if len(initdata) == 0 {
		return hd, nil
	}
	_, digest, err := kbstypes.InitdataDigest(initdata)
	if err != nil {
		return hd, err
	}
	copy(hd[:], kbstypes.FitDigest(digest, abi.HostDataSize))
	return hd, nil
}

// SP is the emulated secure processor of one VM.
type SP struct {
	root     *Root
	launch   Launch
	reportID [32]byte
	certs    []byte
}

// New returns the SP of a VM launched as described by l.
func New(root *Root, l Launch) (*SP, error) {
	sp := &SP{root: root, launch: l}
	if _, err := rand.Read(sp.reportID[:]); err != nil {
		return nil, fmt.Errorf("emulated SNP report id: %w", err)
	}
	table := abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: uuid.MustParse(abi.VcekGUID), RawCert: root.VCEK.Raw},
		{GUID: uuid.MustParse(abi.AskGUID), RawCert: root.ASK.Raw},
		{GUID: uuid.MustParse(abi.ArkGUID), RawCert: root.ARK.Raw},
	}}
	sp.certs = table.Marshal()
	return sp, nil
}

// CertTable is the extended report's certificate table (VCEK, ASK, ARK in
// the GHCB GUID table format), so verifiers need no AMD KDS.
func (sp *SP) CertTable() []byte { return sp.certs }

// Report returns a signed 1184-byte ATTESTATION_REPORT binding reportData
// at the requested VMPL (0-3).
func (sp *SP) Report(reportData [abi.ReportDataSize]byte, vmpl uint32) ([]byte, error) {
	if vmpl > maxVMPL {
		return nil, fmt.Errorf("vmpl %d out of range 0..%d", vmpl, maxVMPL)
	}
	tcb, err := kds.ComposeTCBParts(ReportedTCB())
	if err != nil {
		return nil, err
	}
	chip := sp.root.ChipID()
	r := &spb.Report{
		Version:         ReportVersion,
		Policy:          GuestPolicy,
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		Vmpl:            vmpl,
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		CurrentTcb:      uint64(tcb),
		PlatformInfo:    PlatformInfo,
		ReportData:      reportData[:],
		Measurement:     sp.launch.Measurement[:],
		HostData:        sp.launch.HostData[:],
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        sp.reportID[:],
		ReportIdMa:      make([]byte, abi.ReportIDMASize),
		ReportedTcb:     uint64(tcb),
		Cpuid1EaxFms:    abi.FmsToCpuid1Eax(cpuFamily, cpuModel, cpuStepping),
		ChipId:          chip[:],
		CommittedTcb:    uint64(tcb),
		CurrentBuild:    fwBuild,
		CurrentMinor:    fwMinor,
		CurrentMajor:    fwMajor,
		CommittedBuild:  fwBuild,
		CommittedMinor:  fwMinor,
		CommittedMajor:  fwMajor,
		LaunchTcb:       uint64(tcb),
		Signature:       make([]byte, abi.SignatureSize),
	}
	raw, err := abi.ReportToAbiBytes(r)
	if err != nil {
		return nil, fmt.Errorf("encode emulated SNP report: %w", err)
	}
	digest := sha512.Sum384(abi.SignedComponent(raw))
	R, S, err := ecdsa.Sign(rand.Reader, sp.root.vcekKey, digest[:])
	if err != nil {
		return nil, fmt.Errorf("sign emulated SNP report: %w", err)
	}
	if err := abi.SetSignature(R, S, raw); err != nil {
		return nil, fmt.Errorf("sign emulated SNP report: %w", err)
	}
	return raw, nil
}

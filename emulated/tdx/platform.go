package tdx

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"fmt"

	"github.com/google/go-tdx-guest/pcs"
)

// The imaginary platform every emulated quote describes: a TDX 1.x host
// whose TCB is exactly the one level its TCB info lists as UpToDate. None of
// it is measured, which is why a KBS marks the evidence emulated.
const (
	// FMSPC names the platform in the PCK certificate and the TCB info.
	// It is no Intel FMSPC, so the emulated TCB info cannot be mistaken
	// for a real platform's (its offline file name carries the FMSPC).
	FMSPC = "c10a4b000000"
	// PCEID of the provisioning certification enclave, as Intel's.
	PCEID = "0000"
	// PCESVN of the PCK certificate and the quote header.
	PCESVN = 11
	// QEISVSVN is the quoting enclave's ISVSVN.
	QEISVSVN = 4
	// qeISVProdID is the TD quoting enclave's product id (2, as Intel's).
	qeISVProdID = 2
	// tcbDate of the platform's one TCB level.
	tcbDate = "2024-03-13T00:00:00Z"
	// tcbEvaluationDataNumber of the emulated TCB info and QE identity.
	tcbEvaluationDataNumber = 17
)

// CPUSVN components of the PCK certificate (SGX TCB components 1-16).
var cpuSVN = [16]byte{7, 7, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0}

// TeeTCBSVN is TEE_TCB_SVN of every quote: TDX module SVN 3, module major
// version 0 (so no TDX module identity applies), late microcode 5.
var TeeTCBSVN = [16]byte{3, 0, 5}

// Fixed TD quote body fields.
var (
	// MRSEAM names the (imaginary) TDX module.
	MRSEAM = sha512.Sum384([]byte("cloak emulated-tdx TDX module"))
	// TDAttributes: SEPT_VE_DISABLE (bit 28) only; debug (bit 0) off.
	TDAttributes = [8]byte{0, 0, 0, 0x10}
	// XFAM: x87, SSE, AVX, AVX-512, PKRU, AMX (a Sapphire Rapids guest).
	XFAM = [8]byte{0xe7, 0x1a, 0x06}
)

// The quoting enclave's identity: its report fields and the QE identity
// document agree on them.
var (
	qeMRSIGNER  = sha256.Sum256([]byte("cloak emulated-tdx QE signer"))
	qeMRENCLAVE = sha256.Sum256([]byte("cloak emulated-tdx TD quoting enclave"))
	// qeAttributes: INIT | MODE64BIT | PROVISIONKEY; XFRM x87|SSE|AVX|...
	qeAttributes = [16]byte{0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7}
	// QE identity: attributes 0x11 under mask 0xfb.. (PROVISIONKEY ignored).
	qeIdentityAttributes     = [16]byte{0x11}
	qeIdentityAttributesMask = [16]byte{0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	// qeAuthData is the QE's authentication data (any 32 bytes).
	qeAuthData = sha256.Sum256([]byte("cloak emulated-tdx QE auth data"))
	// ppid and platformInstanceID identify the imaginary platform.
	ppid               = [16]byte{0xc1, 0x0a, 0x4b, 1}
	platformInstanceID = [16]byte{0xc1, 0x0a, 0x4b, 2}
)

// Intel's QE vendor id, in every quote header.
var qeVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// pckCRLURL is where verifiers look up the PCK platform CA's CRL.
var pckCRLURL = pcs.PckCrlURL("platform")

// SGX extension OIDs beyond those go-tdx-guest names.
var (
	oidSGXType            = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}
	oidPlatformInstanceID = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 6}
	oidConfiguration      = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 7}
	oidDynamicPlatform    = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 7, 1}
	oidCachedKeys         = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 7, 2}
	oidSMTEnabled         = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 7, 3}
)

// sgxExtension is the PCK certificate's SGX extension as Intel's platform
// PCK certificates carry it: PPID, TCB (16 CPUSVN components, PCESVN,
// CPUSVN), PCE-ID, FMSPC, SGX type (scalable), platform instance id and
// configuration.
func sgxExtension() (pkix.Extension, error) {
	fmspc, _ := hex.DecodeString(FMSPC)
	pceid, _ := hex.DecodeString(PCEID)
	var tcb []asn1.RawValue
	for i, svn := range cpuSVN {
		tcb = append(tcb, mustPair(asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2, i + 1}, int(svn)))
	}
	tcb = append(tcb, mustPair(pcs.OidPCESvn, PCESVN), mustPair(pcs.OidCPUSvn, cpuSVN[:]))
	config := []asn1.RawValue{
		mustPair(oidDynamicPlatform, true), mustPair(oidCachedKeys, true), mustPair(oidSMTEnabled, true),
	}
	seq := []asn1.RawValue{
		mustPair(pcs.OidPPID, ppid[:]),
		mustPair(pcs.OidTCB, tcb),
		mustPair(pcs.OidPCEID, pceid),
		mustPair(pcs.OidFMSPC, fmspc),
		mustPair(oidSGXType, asn1.Enumerated(1)),
		mustPair(oidPlatformInstanceID, platformInstanceID[:]),
		mustPair(oidConfiguration, config),
	}
	v, err := asn1.Marshal(seq)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode SGX extension: %w", err)
	}
	return pkix.Extension{Id: pcs.OidSgxExtension, Value: v}, nil
}

// mustPair encodes SEQUENCE { oid, value }. The values are fixed above, so a
// failure is a programming error.
func mustPair(oid asn1.ObjectIdentifier, value any) asn1.RawValue {
	b, err := asn1.Marshal(struct {
		ID    asn1.ObjectIdentifier
		Value any
	}{oid, value})
	if err != nil {
		panic(fmt.Sprintf("encode SGX extension field %v: %v", oid, err))
	}
	return asn1.RawValue{FullBytes: b}
}

package tdx

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/cloak-containers/cloak/api/kbstypes"
	emulatedroot "github.com/cloak-containers/cloak/emulated/root"
)

// Quote format constants (Intel TDX DCAP quote v4).
const (
	quoteVersion = 4
	// attestationKeyType 2 is ECDSA-256-with-P-256.
	attestationKeyType = 2
	// Certification data types: 6 = QE report certification data, which
	// holds type 5 = the PCK certificate chain in PEM.
	certDataQEReport = 6
	certDataPCKChain = 5
)

// Launch is what the quoting service knows about one TD from its launch.
type Launch struct {
	// MRTD is the launch digest of the boot artifacts actually started
	// (measurements.EmulatedLaunchDigest), standing in for the TDX
	// module's measurement of the initial TD memory.
	MRTD [abi.MrTdSize]byte
	// MRCONFIGID binds the initdata document (MRConfigIDFor).
	MRCONFIGID [abi.MrConfigIDSize]byte
}

// MRConfigIDFor returns MRCONFIGID for an initdata document: its digest
// under the document's own algorithm (kbstypes.InitdataDigest) fitted to 48
// bytes, as the KBS compares it; zeros when there is none.
func MRConfigIDFor(initdata []byte) ([abi.MrConfigIDSize]byte, error) {
	var id [abi.MrConfigIDSize]byte
	if len(initdata) == 0 {
		return id, nil
	}
	_, digest, err := kbstypes.InitdataDigest(initdata)
	if err != nil {
		return id, err
	}
	copy(id[:], kbstypes.FitDigest(digest, abi.MrConfigIDSize))
	return id, nil
}

// QuotingService is the emulated quoting service of one TD.
type QuotingService struct {
	root   *Root
	launch Launch
	chain  []byte
}

// New returns the quoting service of a TD launched as described by l.
func New(root *Root, l Launch) *QuotingService {
	chain := append(append(emulatedroot.PEMCert(root.PCK), emulatedroot.PEMCert(root.PlatformCA)...), emulatedroot.PEMCert(root.RootCA)...)
	return &QuotingService{root: root, launch: l, chain: chain}
}

// Quote returns a signed DCAP v4 quote whose TD report binds reportData.
// The TD report: MRTD and MRCONFIGID from the launch, REPORT_DATA from the
// guest, TEE_TCB_SVN/MRSEAM/TD_ATTRIBUTES/XFAM fixed (platform.go), and
// MROWNER, MROWNERCONFIG and RTMR0-3 all zero: no firmware or kernel extends
// RTMRs in an emulated TD, and the evidence carries no event log.
func (s *QuotingService) Quote(reportData [abi.ReportDataSize]byte) ([]byte, error) {
	zero48 := make([]byte, 48)
	body := &pb.TDQuoteBody{
		TeeTcbSvn:      TeeTCBSVN[:],
		MrSeam:         MRSEAM[:],
		MrSignerSeam:   zero48, // Intel's TDX module: all zeros
		SeamAttributes: make([]byte, 8),
		TdAttributes:   TDAttributes[:],
		Xfam:           XFAM[:],
		MrTd:           s.launch.MRTD[:],
		MrConfigId:     s.launch.MRCONFIGID[:],
		MrOwner:        zero48,
		MrOwnerConfig:  zero48,
		Rtmrs:          [][]byte{zero48, zero48, zero48, zero48},
		ReportData:     reportData[:],
	}
	header := &pb.Header{
		Version:            quoteVersion,
		AttestationKeyType: attestationKeyType,
		TeeType:            abi.TeeTDX,
		QeSvn:              binary.LittleEndian.AppendUint16(nil, QEISVSVN),
		PceSvn:             binary.LittleEndian.AppendUint16(nil, PCESVN),
		QeVendorId:         qeVendorID[:],
		UserData:           make([]byte, 20),
	}
	attKey := s.root.keys.attestation
	pub := make([]byte, 64)
	attKey.X.FillBytes(pub[:32])
	attKey.Y.FillBytes(pub[32:])

	// The QE report binds the attestation key: REPORT_DATA =
	// sha256(attestation key || QE auth data) || 32 zero bytes.
	keyHash := sha256.Sum256(append(append([]byte{}, pub...), qeAuthData[:]...))
	qe := &pb.EnclaveReport{
		CpuSvn:     cpuSVN[:],
		Attributes: qeAttributes[:],
		MrEnclave:  qeMRENCLAVE[:],
		MrSigner:   qeMRSIGNER[:],
		IsvProdId:  qeISVProdID,
		IsvSvn:     QEISVSVN,
		ReportData: append(keyHash[:], make([]byte, 32)...),
		Reserved1:  make([]byte, 28),
		Reserved2:  make([]byte, 32),
		Reserved3:  make([]byte, 96),
		Reserved4:  make([]byte, 60),
	}
	qeRaw, err := abi.EnclaveReportToAbiBytes(qe)
	if err != nil {
		return nil, fmt.Errorf("encode emulated QE report: %w", err)
	}
	// The PCK key signs the QE report, as the provisioning enclave's
	// certified key does on real hardware.
	qeSig, err := rawSign(s.root.keys.pck, qeRaw)
	if err != nil {
		return nil, fmt.Errorf("sign emulated QE report: %w", err)
	}
	qrc := &pb.QEReportCertificationData{
		QeReport:          qe,
		QeReportSignature: qeSig,
		QeAuthData:        &pb.QeAuthData{ParsedDataSize: uint32(len(qeAuthData)), Data: qeAuthData[:]},
		PckCertificateChainData: &pb.PCKCertificateChainData{
			CertificateDataType: certDataPCKChain,
			Size:                uint32(len(s.chain)),
			PckCertChain:        s.chain,
		},
	}
	// QE report 384 + signature 64 + auth data (2 + n) + chain data (6 + n).
	certSize := 384 + 64 + 2 + len(qeAuthData) + 6 + len(s.chain)
	hdrRaw, err := abi.HeaderToAbiBytes(header)
	if err != nil {
		return nil, fmt.Errorf("encode emulated quote header: %w", err)
	}
	bodyRaw, err := abi.TdQuoteBodyToAbiBytes(body)
	if err != nil {
		return nil, fmt.Errorf("encode emulated TD quote body: %w", err)
	}
	sig, err := rawSign(attKey, append(hdrRaw, bodyRaw...))
	if err != nil {
		return nil, fmt.Errorf("sign emulated quote: %w", err)
	}
	q := &pb.QuoteV4{
		Header:         header,
		TdQuoteBody:    body,
		SignedDataSize: uint32(64 + 64 + 6 + certSize),
		SignedData: &pb.Ecdsa256BitQuoteV4AuthData{
			Signature:           sig,
			EcdsaAttestationKey: pub,
			CertificationData: &pb.CertificationData{
				CertificateDataType:       certDataQEReport,
				Size:                      uint32(certSize),
				QeReportCertificationData: qrc,
			},
		},
	}
	raw, err := abi.QuoteToAbiBytes(q)
	if err != nil {
		return nil, fmt.Errorf("encode emulated quote: %w", err)
	}
	return raw, nil
}

// rawSign returns the ECDSA P-256 signature of sha256(msg) as r || s, the
// encoding of DCAP quotes and Intel's collateral.
func rawSign(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

package tdx

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
)

// go-tdx-guest v0.3.1 refuses any TCB status but UpToDate, as the last step
// of each of its two collateral checks. Cloak reports the status as a claim
// instead and lets the attestation policy decide (as Intel's QVL and Trustee
// do), so these two error prefixes are not fatal by themselves: everything
// the library checks before them has passed, and what it would have checked
// after them (the QE identity) is checked here. The refusal wraps the
// library's ErrTcbStatus (or an unexported fmt error) with %v, so
// errors.Is cannot see it: the prefixes are all it exports of this case.
const (
	tdTCBStatusErr = "TDX TCB info reported by Intel PCS failed TCB status check: "
	qeTCBStatusErr = "QE Identity reported by Intel PCS failed TCB status check: "
)

// tcbNotSupported is the status when no TCB level of the TCB info matches the
// platform: its TCB is older than anything Intel still lists.
const tcbNotSupported = "NotSupported"

// tcbResult is the TCB appraisal of a verified quote.
type tcbResult struct {
	Status      string   // of the platform + TDX module
	Date        string   // tcbDate of the matching level
	AdvisoryIDs []string // of the matching level
	QEStatus    string   // of the quoting enclave
	FMSPC       string
	// EvaluationDataNumber orders TCB recoveries: a policy can demand a
	// minimum to refuse collateral older than a known recovery.
	EvaluationDataNumber int
}

// tcbStatusOnly reports whether a go-tdx-guest error is only its refusal of
// a TCB status other than UpToDate.
func tcbStatusOnly(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, tdTCBStatusErr) || strings.HasPrefix(s, qeTCBStatusErr)
}

// appraiseTCB matches the quote against the TCB info and QE identity that
// go-tdx-guest fetched and verified, and checks the QE report against the
// QE identity.
func appraiseTCB(quote *pb.QuoteV4, tcbInfoBody, qeIdentityBody []byte) (*tcbResult, error) {
	var info pcs.TdxTcbInfo
	if err := json.Unmarshal(tcbInfoBody, &info); err != nil {
		return nil, fmt.Errorf("parse TCB info: %w", err)
	}
	var ident pcs.QeIdentity
	if err := json.Unmarshal(qeIdentityBody, &ident); err != nil {
		return nil, fmt.Errorf("parse QE identity: %w", err)
	}
	chain := quote.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	certs := pemCerts(chain)
	if len(certs) == 0 {
		return nil, fmt.Errorf("quote carries no PCK certificate")
	}
	exts, err := pcs.PckCertificateExtensions(certs[0])
	if err != nil {
		return nil, fmt.Errorf("PCK certificate extensions: %w", err)
	}
	res := &tcbResult{Status: tcbNotSupported, FMSPC: info.TcbInfo.Fmspc, EvaluationDataNumber: info.TcbInfo.TcbEvaluationDataNumber}
	svn := quote.GetTdQuoteBody().GetTeeTcbSvn()
	for _, lvl := range info.TcbInfo.TcbLevels {
		if svnAtLeast(exts.TCB.CPUSvnComponents, lvl.Tcb.SgxTcbcomponents, 0) &&
			exts.TCB.PCESvn >= lvl.Tcb.Pcesvn && len(svn) == 16 &&
			svnAtLeast(svn, lvl.Tcb.TdxTcbcomponents, tdxSVNStart(svn)) {
			res.Status, res.Date, res.AdvisoryIDs = string(lvl.TcbStatus), lvl.TcbDate, lvl.AdvisoryIDs
			break
		}
	}
	// A TDX module with a major version (TEE_TCB_SVN[1]) has its own TCB
	// levels; its status counts when it is worse than UpToDate.
	if len(svn) == 16 && svn[1] > 0 && res.Status != tcbNotSupported {
		if st := moduleStatus(info.TcbInfo.TdxModuleIdentities, svn); st != string(pcs.TcbComponentStatusUpToDate) {
			res.Status = st
		}
	}

	qe := quote.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport()
	id := ident.EnclaveIdentity
	if err := checkQEIdentity(qe, &id); err != nil {
		return nil, err
	}
	res.QEStatus = tcbNotSupported
	for _, lvl := range id.TcbLevels {
		if lvl.Tcb.Isvsvn <= qe.GetIsvSvn() {
			res.QEStatus = string(lvl.TcbStatus)
			break
		}
	}
	return res, nil
}

// tdxSVNStart is where TDX TCB components are compared: with a TDX module
// major version, components 0 and 1 are the module's and are matched by its
// own identity instead.
func tdxSVNStart(svn []byte) int {
	if svn[1] > 0 {
		return 2
	}
	return 0
}

func svnAtLeast(have []byte, levels []pcs.TcbComponent, start int) bool {
	if len(have) != len(levels) {
		return false
	}
	for i := start; i < len(have); i++ {
		if have[i] < levels[i].Svn {
			return false
		}
	}
	return true
}

func moduleStatus(ids []pcs.TdxModuleIdentity, svn []byte) string {
	want := "TDX_" + hex.EncodeToString(svn[1:2])
	for _, id := range ids {
		if !strings.EqualFold(id.ID, want) {
			continue
		}
		for _, lvl := range id.TcbLevels {
			if uint32(svn[0]) >= lvl.Tcb.Isvsvn {
				return string(lvl.TcbStatus)
			}
		}
	}
	return tcbNotSupported
}

// checkQEIdentity checks that the quoting enclave is the one Intel's QE
// identity describes.
func checkQEIdentity(qe *pb.EnclaveReport, id *pcs.EnclaveIdentity) error {
	if len(id.MiscselectMask.Bytes) != 4 || len(id.Miscselect.Bytes) != 4 {
		return fmt.Errorf("QE identity MISCSELECT fields are not 4 bytes")
	}
	mask := binary.LittleEndian.Uint32(id.MiscselectMask.Bytes)
	if qe.GetMiscSelect()&mask != binary.LittleEndian.Uint32(id.Miscselect.Bytes) {
		return fmt.Errorf("QE report MISCSELECT %#x does not match the QE identity", qe.GetMiscSelect())
	}
	attrs := qe.GetAttributes()
	if len(id.AttributesMask.Bytes) != len(attrs) || len(id.Attributes.Bytes) != len(attrs) {
		return fmt.Errorf("QE identity ATTRIBUTES fields are not %d bytes", len(attrs))
	}
	for i := range attrs {
		if attrs[i]&id.AttributesMask.Bytes[i] != id.Attributes.Bytes[i] {
			return fmt.Errorf("QE report ATTRIBUTES %x do not match the QE identity", attrs)
		}
	}
	if !bytes.Equal(qe.GetMrSigner(), id.Mrsigner.Bytes) {
		return fmt.Errorf("QE report MRSIGNER %x is not the QE identity's %x", qe.GetMrSigner(), id.Mrsigner.Bytes)
	}
	if qe.GetIsvProdId() != uint32(id.IsvProdID) {
		return fmt.Errorf("QE report ISVPRODID %d is not the QE identity's %d", qe.GetIsvProdId(), id.IsvProdID)
	}
	return nil
}

package tdx

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"

	emulatedroot "github.com/cloak-containers/cloak/emulated/root"
	"github.com/cloak-containers/cloak/internal/atomicfile"
)

// CollateralValidity is how long collateral written by WriteCollateral stays
// valid (nextUpdate of the TCB info, QE identity and CRLs). Intel's last
// about 30 days; emulated collateral is rewritten whenever wanted.
const CollateralValidity = 365 * 24 * time.Hour

// Collateral returns the PCS responses a verifier fetches for this
// platform's quotes, keyed by URL: TCB info for FMSPC, QE identity, the PCK
// platform CA's CRL and the root CA's CRL, signed as Intel's PCS signs them
// and issued at now. Headers carry the issuer chains Intel's PCS sends.
func (r *Root) Collateral(now time.Time) (map[string]Response, error) {
	now = now.UTC().Truncate(time.Second)
	next := now.Add(CollateralValidity)
	tcbInfo, err := r.signed("tcbInfo", tcbInfoDoc(now, next))
	if err != nil {
		return nil, err
	}
	qeIdentity, err := r.signed("enclaveIdentity", qeIdentityDoc(now, next))
	if err != nil {
		return nil, err
	}
	crl := func(issuer *x509.Certificate, key *ecdsa.PrivateKey) ([]byte, error) {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			Number: big.NewInt(now.Unix()), ThisUpdate: now, NextUpdate: next,
		}, issuer, key)
		if err != nil {
			return nil, fmt.Errorf("emulated TDX CRL of %q: %w", issuer.Subject.CommonName, err)
		}
		return der, nil
	}
	pckCRL, err := crl(r.PlatformCA, r.keys.platform)
	if err != nil {
		return nil, err
	}
	rootCRL, err := crl(r.RootCA, r.keys.root)
	if err != nil {
		return nil, err
	}
	chain := func(c *x509.Certificate) string {
		return url.QueryEscape(string(append(emulatedroot.PEMCert(c), emulatedroot.PEMCert(r.RootCA)...)))
	}
	return map[string]Response{
		pcs.TcbInfoURL(FMSPC): {Header: map[string]string{"Tcb-Info-Issuer-Chain": chain(r.TCBSigning)}, Body: tcbInfo},
		pcs.QeIdentityURL():   {Header: map[string]string{"Sgx-Enclave-Identity-Issuer-Chain": chain(r.TCBSigning)}, Body: qeIdentity},
		pckCRLURL:             {Header: map[string]string{"Sgx-Pck-Crl-Issuer-Chain": chain(r.PlatformCA)}, Body: pckCRL},
		RootCRLURL:            {Body: rootCRL},
	}, nil
}

// Response is one collateral document and the response headers a verifier
// needs with it.
type Response struct {
	Header map[string]string
	Body   []byte
}

// WriteCollateral writes Collateral(now) as an offline collateral directory
// (the layout of kbs/verifier/collateral: the URL without scheme as a path,
// "@" and the sorted query appended, headers in a ".headers" sibling). A
// KBS started with this directory verifies emulated quotes without network.
//
// The QE identity and PCK CRL have fixed URLs, the same as a real platform's:
// this directory serves emulated TDX only and must not be merged with the
// collateral of real TDX hosts.
func (r *Root) WriteCollateral(dir string, now time.Time) error {
	docs, err := r.Collateral(now)
	if err != nil {
		return err
	}
	for u, resp := range docs {
		p, err := offlinePath(dir, u)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("write emulated TDX collateral: %w", err)
		}
		if len(resp.Header) > 0 {
			var h strings.Builder
			for name, v := range resp.Header {
				fmt.Fprintf(&h, "%s: %s\n", name, v)
			}
			if err := atomicfile.Write(p+".headers", []byte(h.String()), 0o644); err != nil {
				return fmt.Errorf("write emulated TDX collateral: %w", err)
			}
		}
		if err := atomicfile.Write(p, resp.Body, 0o644); err != nil {
			return fmt.Errorf("write emulated TDX collateral: %w", err)
		}
	}
	return nil
}

// offlinePath is where an offline collateral directory holds rawURL. The
// URLs are this package's own, so no hostile input reaches it.
func offlinePath(dir, rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("collateral URL %q is not absolute", rawURL)
	}
	rel := path.Join(u.Host, u.EscapedPath())
	if q := u.Query(); len(q) > 0 {
		rel += "@" + q.Encode()
	}
	return filepath.Join(dir, filepath.FromSlash(rel)), nil
}

// signed wraps a collateral document as Intel's PCS does:
// {"<field>": doc, "signature": hex(r || s)} with the signature by the TCB
// signing key over the document's exact bytes.
func (r *Root) signed(field string, doc any) ([]byte, error) {
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode emulated TDX %s: %w", field, err)
	}
	sig, err := rawSign(r.keys.tcb, raw)
	if err != nil {
		return nil, fmt.Errorf("sign emulated TDX %s: %w", field, err)
	}
	return json.Marshal(map[string]any{field: json.RawMessage(raw), "signature": hex.EncodeToString(sig)})
}

type tcbComponent struct {
	SVN byte `json:"svn"`
}

type tcbLevel struct {
	TCB struct {
		SGX    []tcbComponent `json:"sgxtcbcomponents,omitempty"`
		PCESVN *int           `json:"pcesvn,omitempty"`
		TDX    []tcbComponent `json:"tdxtcbcomponents,omitempty"`
		ISVSVN *int           `json:"isvsvn,omitempty"`
	} `json:"tcb"`
	TCBDate   string `json:"tcbDate"`
	TCBStatus string `json:"tcbStatus"`
}

func components(svns []byte) []tcbComponent {
	out := make([]tcbComponent, len(svns))
	for i, s := range svns {
		out[i].SVN = s
	}
	return out
}

func hexUpper(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

// tcbInfoDoc is the TDX TCB info (version 3) of the platform: one TCB level,
// the platform's own, UpToDate.
func tcbInfoDoc(now, next time.Time) any {
	var lvl tcbLevel
	pcesvn := PCESVN
	lvl.TCB.SGX, lvl.TCB.PCESVN, lvl.TCB.TDX = components(cpuSVN[:]), &pcesvn, components(TeeTCBSVN[:])
	lvl.TCBDate, lvl.TCBStatus = tcbDate, "UpToDate"
	return map[string]any{
		"id": "TDX", "version": 3,
		"issueDate": now.Format(time.RFC3339), "nextUpdate": next.Format(time.RFC3339),
		"fmspc": FMSPC, "pceId": PCEID, "tcbType": 0, "tcbEvaluationDataNumber": tcbEvaluationDataNumber,
		"tdxModule": map[string]string{
			"mrsigner": hexUpper(make([]byte, 48)), "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF",
		},
		"tcbLevels": []tcbLevel{lvl},
	}
}

// qeIdentityDoc is the TD_QE identity (version 2) of the emulated quoting
// enclave.
func qeIdentityDoc(now, next time.Time) any {
	var lvl tcbLevel
	isvsvn := QEISVSVN
	lvl.TCB.ISVSVN = &isvsvn
	lvl.TCBDate, lvl.TCBStatus = tcbDate, "UpToDate"
	return map[string]any{
		"id": "TD_QE", "version": 2,
		"issueDate": now.Format(time.RFC3339), "nextUpdate": next.Format(time.RFC3339),
		"tcbEvaluationDataNumber": tcbEvaluationDataNumber,
		"miscselect":              "00000000", "miscselectMask": "FFFFFFFF",
		"attributes": hexUpper(qeIdentityAttributes[:]), "attributesMask": hexUpper(qeIdentityAttributesMask[:]),
		"mrsigner": hexUpper(qeMRSIGNER[:]), "isvprodid": qeISVProdID,
		"tcbLevels": []tcbLevel{lvl},
	}
}

package tdx

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
)

// intelPCS is the URL prefix go-tdx-guest uses for TCB info, QE identity
// and PCK CRLs; Options.PCSBaseURL replaces it.
const intelPCS = "https://api.trustedservices.intel.com"

// Response headers that carry the issuer chain of each kind of collateral.
var issuerChainHeaders = []string{"Tcb-Info-Issuer-Chain", "Sgx-Enclave-Identity-Issuer-Chain", "Sgx-Pck-Crl-Issuer-Chain"}

type response struct {
	header map[string][]string
	body   []byte
}

// getter adapts a Fetcher to go-tdx-guest's trust.HTTPSGetter for one
// verification, and remembers what it served so that a failure can be
// explained (which collateral expired, and when).
type getter struct {
	ctx  context.Context
	f    Fetcher
	base string
	seen map[string]response
}

func (g *getter) Get(u string) (map[string][]string, []byte, error) {
	if g.base != "" && strings.HasPrefix(u, intelPCS+"/") {
		u = strings.TrimSuffix(g.base, "/") + strings.TrimPrefix(u, intelPCS)
	}
	h, b, err := g.f.Get(g.ctx, u)
	if err != nil {
		return nil, nil, err
	}
	g.seen[u] = response{header: h, body: b}
	return h, b, nil
}

// served returns the body of the response whose URL contains part, or nil.
func (g *getter) served(part string) []byte {
	for u, r := range g.seen {
		if strings.Contains(u, part) {
			return r.body
		}
	}
	return nil
}

// expired names every certificate and piece of collateral that is not valid
// at now, or returns "" if everything is within its dates.
func (g *getter) expired(quote *pb.QuoteV4, now time.Time) string {
	var out []string
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	checkCert := func(what string, c *x509.Certificate) {
		switch {
		case now.After(c.NotAfter):
			out = append(out, fmt.Sprintf("%s %q expired at %s", what, c.Subject.CommonName, stamp(c.NotAfter)))
		case now.Before(c.NotBefore):
			out = append(out, fmt.Sprintf("%s %q is not valid before %s", what, c.Subject.CommonName, stamp(c.NotBefore)))
		}
	}
	chain := quote.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	for _, c := range pemCerts(chain) {
		checkCert("PCK chain certificate", c)
	}
	for _, u := range slices.Sorted(maps.Keys(g.seen)) {
		r := g.seen[u]
		for _, name := range issuerChainHeaders {
			if vals := r.header[name]; len(vals) == 1 {
				if s, err := url.QueryUnescape(vals[0]); err == nil {
					for _, c := range pemCerts([]byte(s)) {
						checkCert("collateral issuer certificate", c)
					}
				}
			}
		}
		var info pcs.TdxTcbInfo
		var ident pcs.QeIdentity
		switch {
		case strings.Contains(u, "/tcb?") && json.Unmarshal(r.body, &info) == nil && !info.TcbInfo.NextUpdate.IsZero():
			if now.After(info.TcbInfo.NextUpdate) {
				out = append(out, fmt.Sprintf("TCB info for FMSPC %s (%s) expired at %s (nextUpdate)", info.TcbInfo.Fmspc, u, stamp(info.TcbInfo.NextUpdate)))
			}
		case strings.Contains(u, "/qe/identity") && json.Unmarshal(r.body, &ident) == nil && !ident.EnclaveIdentity.NextUpdate.IsZero():
			if now.After(ident.EnclaveIdentity.NextUpdate) {
				out = append(out, fmt.Sprintf("QE identity (%s) expired at %s (nextUpdate)", u, stamp(ident.EnclaveIdentity.NextUpdate)))
			}
		default:
			if crl, err := x509.ParseRevocationList(r.body); err == nil && !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
				out = append(out, fmt.Sprintf("CRL %s expired at %s (nextUpdate)", u, stamp(crl.NextUpdate)))
			}
		}
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(dedupe(out), "; ") + fmt.Sprintf(
		" (verification time %s): fetch current collateral from Intel PCS or your PCCS, or refresh the offline collateral directory", stamp(now))
}

func pemCerts(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// dedupe keeps the first occurrence of each message: the same issuer
// certificate heads several collateral responses.
func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// Package tdx is Cloak's emulated Intel TDX platform for CI and
// laptops: a simulated quoting service in the shim that issues genuine-format
// DCAP v4 quotes, signed by a test-only Intel-style hierarchy generated on
// this machine (root CA -> PCK platform CA -> PCK certificate with the SGX
// extensions, a quoting-enclave attestation key, and a TCB signing
// certificate for the TCB info and QE identity documents). A KBS accepts its
// quotes only when it was told to trust that root and reads the collateral
// this package writes (WriteCollateral); nothing here is a security boundary.
//
// The guest reaches it over the same virtio-serial port as the emulated
// SEV-SNP SP (cloak.sp); the request/response lines are in protocol.go.
package tdx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"path/filepath"
	"time"

	emulatedroot "github.com/cloak-containers/cloak/emulated/root"
)

// DefaultDir holds the hierarchy of this machine's emulated TDX platform.
const DefaultDir = "/var/lib/cloak/emulated-tdx"

// Files in the hierarchy directory.
const (
	// RootFile is the trust anchor to give a KBS (kbs/verifier/tdx
	// Options.ExtraRoots): the emulated "Intel SGX Root CA" in PEM.
	RootFile = "root_ca.pem"
	// CertsFile holds the PCK certificate, the PCK platform CA and the TCB
	// signing certificate, in this order (PEM).
	CertsFile = "certs.pem"
	// KeysFile holds the private keys (PKCS #8 PEM, mode 0600): root, PCK
	// platform CA, PCK, TCB signing and the QE attestation key.
	KeysFile = "keys.pem"
	// CollateralDir is the offline collateral directory LoadOrCreate
	// writes next to the hierarchy (see WriteCollateral).
	CollateralDir = "collateral"
)

// Subject common names go-tdx-guest's verifier requires of each certificate.
const (
	rootCN       = "Intel SGX Root CA"
	platformCN   = "Intel SGX PCK Platform CA"
	pckCN        = "Intel SGX PCK Certificate"
	tcbSigningCN = "Intel SGX TCB Signing"
)

// RootCRLURL is the root CA's CRL distribution point. The ".invalid" host
// never resolves: verifiers read the CRL from the offline collateral.
const RootCRLURL = "https://emulated-tdx.invalid/IntelSGXRootCA.der"

// validity of the generated certificates and collateral; regenerate by
// deleting the directory.
const validity = 25 * 365 * 24 * time.Hour

// Root is a test-only TDX platform identity: its certificates and keys.
type Root struct {
	RootCA, PlatformCA, PCK, TCBSigning *x509.Certificate
	keys                                rootKeys
}

type rootKeys struct {
	root, platform, pck, tcb, attestation *ecdsa.PrivateKey
}

// RootPEM is the root CA certificate a KBS trusts.
func (r *Root) RootPEM() []byte { return emulatedroot.PEMCert(r.RootCA) }

// LoadOrCreate reads the hierarchy in dir, creating dir (0700), a new
// hierarchy and its offline collateral (dir/collateral) the first time.
// Concurrent callers (several shims starting pods) share one hierarchy:
// creation happens under a lock file.
func LoadOrCreate(dir string) (*Root, error) {
	return emulatedroot.LoadOrCreate(dir, "emulated TDX", func() (*Root, error) { return Load(dir) }, func() (*Root, error) { return create(dir) })
}

// create generates a hierarchy and writes it and its collateral to dir.
func create(dir string) (*Root, error) {
	now := time.Now()
	r, err := Generate(now)
	if err != nil {
		return nil, err
	}
	if err := r.WriteCollateral(filepath.Join(dir, CollateralDir), now); err != nil {
		return nil, err
	}
	// The keys last: Load treats a directory without them as absent, so
	// a crash half-way is repaired by the next caller.
	if err := r.save(dir); err != nil {
		return nil, err
	}
	return r, nil
}

// Load reads a hierarchy LoadOrCreate wrote. A missing file is
// os.ErrNotExist.
func Load(dir string) (*Root, error) {
	files, err := emulatedroot.ReadFiles(dir, "emulated TDX hierarchy", KeysFile, RootFile, CertsFile)
	if err != nil {
		return nil, err
	}
	keysPEM, rootPEM, certsPEM := files[0], files[1], files[2]
	damaged := func(what string, err error) error {
		return fmt.Errorf("emulated TDX hierarchy in %s is damaged (%s: %v): delete the directory to generate a new one", dir, what, err)
	}
	certs, err := emulatedroot.ParseCerts(append(rootPEM, certsPEM...))
	if err != nil || len(certs) != 4 {
		return nil, damaged("want 4 certificates", err)
	}
	r := &Root{RootCA: certs[0], PCK: certs[1], PlatformCA: certs[2], TCBSigning: certs[3]}
	parsed, err := emulatedroot.ParseKeys(keysPEM)
	if err != nil {
		return nil, damaged(KeysFile, err)
	}
	var keys []*ecdsa.PrivateKey
	for _, k := range parsed {
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, damaged(KeysFile, fmt.Errorf("unexpected key type %T", k))
		}
		keys = append(keys, ek)
	}
	if len(keys) != 5 {
		return nil, damaged(KeysFile, fmt.Errorf("want 5 keys, found %d", len(keys)))
	}
	r.keys = rootKeys{root: keys[0], platform: keys[1], pck: keys[2], tcb: keys[3], attestation: keys[4]}
	for _, p := range []struct {
		c *x509.Certificate
		k *ecdsa.PrivateKey
	}{{r.RootCA, r.keys.root}, {r.PlatformCA, r.keys.platform}, {r.PCK, r.keys.pck}, {r.TCBSigning, r.keys.tcb}} {
		if !p.k.PublicKey.Equal(p.c.PublicKey) {
			return nil, damaged(KeysFile, fmt.Errorf("key does not match certificate %q", p.c.Subject.CommonName))
		}
	}
	return r, nil
}

// Generate creates a new test-only hierarchy in memory whose certificates
// start at now.
func Generate(now time.Time) (*Root, error) {
	r := &Root{}
	for _, k := range []**ecdsa.PrivateKey{&r.keys.root, &r.keys.platform, &r.keys.pck, &r.keys.tcb, &r.keys.attestation} {
		var err error
		if *k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("generate emulated TDX key: %w", err)
		}
	}
	notBefore := now.Add(-time.Hour).UTC().Truncate(time.Second)
	ca := func(cn string, serial int64) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: intelName(cn),
			NotBefore: notBefore, NotAfter: notBefore.Add(validity),
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			IsCA:     true, BasicConstraintsValid: true,
			CRLDistributionPoints: []string{RootCRLURL},
		}
	}
	var err error
	rootTmpl := ca(rootCN, 1)
	if r.RootCA, err = emulatedroot.CreateCert(rootTmpl, rootTmpl, &r.keys.root.PublicKey, r.keys.root); err != nil {
		return nil, fmt.Errorf("emulated TDX root CA: %w", err)
	}
	platTmpl := ca(platformCN, 2)
	platTmpl.MaxPathLenZero = true
	if r.PlatformCA, err = emulatedroot.CreateCert(platTmpl, r.RootCA, &r.keys.platform.PublicKey, r.keys.root); err != nil {
		return nil, fmt.Errorf("emulated TDX PCK platform CA: %w", err)
	}
	sgx, err := sgxExtension()
	if err != nil {
		return nil, err
	}
	// Exactly the six extensions of Intel's PCK certificates (go-tdx-guest
	// counts them): AKI, CRL distribution point, SKI, key usage, basic
	// constraints and the SGX extension.
	pckTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: intelName(pckCN),
		NotBefore: notBefore, NotAfter: notBefore.Add(validity),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, BasicConstraintsValid: true,
		SubjectKeyId:          subjectKeyID(&r.keys.pck.PublicKey),
		CRLDistributionPoints: []string{pckCRLURL},
		ExtraExtensions:       []pkix.Extension{sgx},
	}
	if r.PCK, err = emulatedroot.CreateCert(pckTmpl, r.PlatformCA, &r.keys.pck.PublicKey, r.keys.platform); err != nil {
		return nil, fmt.Errorf("emulated TDX PCK certificate: %w", err)
	}
	tcbTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(4), Subject: intelName(tcbSigningCN),
		NotBefore: notBefore, NotAfter: notBefore.Add(validity),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, BasicConstraintsValid: true,
		CRLDistributionPoints: []string{RootCRLURL},
	}
	if r.TCBSigning, err = emulatedroot.CreateCert(tcbTmpl, r.RootCA, &r.keys.tcb.PublicKey, r.keys.root); err != nil {
		return nil, fmt.Errorf("emulated TDX TCB signing certificate: %w", err)
	}
	return r, nil
}

// intelName is Intel's subject layout with an organization that says what
// the certificate really is.
func intelName(cn string) pkix.Name {
	return pkix.Name{
		CommonName:   cn,
		Organization: []string{"Cloak emulated-tdx (test only)"},
		Locality:     []string{"Santa Clara"},
		Province:     []string{"CA"},
		Country:      []string{"US"},
	}
}

// subjectKeyID is the SHA-1 of the public key point, as RFC 5280 suggests
// (Go adds one by itself only to CA certificates).
func subjectKeyID(pub *ecdsa.PublicKey) []byte {
	k, err := pub.ECDH()
	if err != nil {
		return nil
	}
	sum := sha1.Sum(k.Bytes())
	return sum[:]
}

// save writes the hierarchy to dir (which must exist), keys last.
func (r *Root) save(dir string) error {
	keys, err := emulatedroot.MarshalKeys(r.keys.root, r.keys.platform, r.keys.pck, r.keys.tcb, r.keys.attestation)
	if err != nil {
		return fmt.Errorf("encode emulated TDX key: %w", err)
	}
	certs := append(append(emulatedroot.PEMCert(r.PCK), emulatedroot.PEMCert(r.PlatformCA)...), emulatedroot.PEMCert(r.TCBSigning)...)
	if err := emulatedroot.WriteFiles(dir,
		emulatedroot.File{Name: RootFile, Data: r.RootPEM(), Mode: 0o644},
		emulatedroot.File{Name: CertsFile, Data: certs, Mode: 0o644},
		emulatedroot.File{Name: KeysFile, Data: keys, Mode: 0o600},
	); err != nil {
		return fmt.Errorf("write emulated TDX hierarchy: %w", err)
	}
	return nil
}

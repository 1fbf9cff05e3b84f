package server

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/measurements/bundle"
)

func refDoc(values ...bundle.Value) bundle.Document {
	return bundle.Document{Name: "test image", Image: bundle.Image{KernelSHA256: strings.Repeat("ab", 32), Cmdline: "console=ttyS0"}, Values: values}
}

func signBundle(t *testing.T, key crypto.Signer, d bundle.Document) []byte {
	t.Helper()
	b, err := bundle.Sign(d, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (k *kbs) referenceValues() adminapi.ReferenceValues {
	k.t.Helper()
	var rv adminapi.ReferenceValues
	if err := json.Unmarshal(k.mustAdmin("GET", adminapi.PathReferenceValues, "", nil), &rv); err != nil {
		k.t.Fatal(err)
	}
	return rv
}

func TestReferenceValueImport(t *testing.T) {
	_, signer, _ := ed25519.GenerateKey(rand.Reader)
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	k := startKBS(t, t.TempDir(), func(c *Config) { c.ReferenceValueSigners = []crypto.PublicKey{signer.Public()} })
	meas := strings.Repeat("0a", 48)
	good := signBundle(t, signer, refDoc(
		bundle.Value{Name: "snp_launch_measurement", Value: meas, Config: bundle.Config{TEE: "snp", VCPUs: 1, CPUType: "EPYC-Milan"}},
		bundle.Value{Name: "sample_svn", Value: "1"},
	))

	// Every refusal first, on an empty store: nothing may be stored.
	tampered := bytes.Clone(good)
	tampered[bytes.Index(tampered, []byte(meas))] = 'f'
	bare := bytes.Clone(good)[10:] // not a COSE_Sign1 any more
	// tpm_pcr00 holds the most a hand-set name may; the bundle's values
	// would take it past the import limit.
	var handSet []string
	for i := 0; i < adminapi.MaxReferenceValues; i++ {
		handSet = append(handSet, fmt.Sprintf("%064x", i))
	}
	hs, _ := json.Marshal(adminapi.ReferenceValue{Name: "tpm_pcr00", Values: handSet})
	k.mustAdmin("POST", adminapi.PathReferenceValues, "application/json", hs)
	tooMany := refDoc()
	for i := 0; i <= maxImportedValues-adminapi.MaxReferenceValues; i++ {
		tooMany.Values = append(tooMany.Values, bundle.Value{Name: "tpm_pcr00", Value: fmt.Sprintf("%064x", 1<<20+i)})
	}
	for _, c := range []struct {
		name   string
		body   []byte
		status int
		check  string
	}{
		{"tampered", tampered, 400, "reference-bundle"},
		{"untrusted signer", signBundle(t, stranger, refDoc(bundle.Value{Name: "sample_svn", Value: "1"})), 403, "reference-bundle-signer"},
		{"unsigned", mustCBOR(t, refDoc(bundle.Value{Name: "sample_svn", Value: "1"})), 400, "reference-bundle"},
		{"truncated", good[:len(good)/2], 400, "reference-bundle"},
		{"garbage", bare, 400, "reference-bundle"},
		{"oversized", make([]byte, bundle.MaxSize+1), 413, "body-too-large"},
		{"too many for one name", signBundle(t, signer, tooMany), 400, "reference-bundle"},
		// Signed or not, a value must fit its name.
		{"typo name", signBundle(t, signer, refDoc(bundle.Value{Name: "snp_launch_measurment", Value: meas})), 400, "reference-bundle"},
		{"short measurement", signBundle(t, signer, refDoc(bundle.Value{Name: "snp_launch_measurement", Value: "abcd"})), 400, "reference-bundle"},
	} {
		st, b := k.adminDo(adminapi.RoleAdmin, "POST", adminapi.PathReferenceImport, adminapi.ContentTypeCOSE, c.body)
		p := wantProblem(t, st, b, c.status, c.check)
		if rv := k.referenceValues(); len(rv.ReferenceValues) != 1 || len(rv.ReferenceValues["tpm_pcr00"]) != adminapi.MaxReferenceValues || len(rv.Sources) != 0 {
			t.Fatalf("%s (%s): stored %+v", c.name, p.Detail, rv)
		}
	}
	if st, b := k.adminDo(adminapi.RoleAuditor, "POST", adminapi.PathReferenceImport, adminapi.ContentTypeCOSE, good); st != 403 {
		t.Fatalf("auditor import: %d %s", st, b)
	}

	var res adminapi.ImportResult
	if err := json.Unmarshal(k.mustAdmin("POST", adminapi.PathReferenceImport, adminapi.ContentTypeCOSE, good), &res); err != nil {
		t.Fatal(err)
	}
	kid, _ := bundle.KeyID(signer.Public())
	if !strings.HasPrefix(res.Bundle, "sha256:") || res.BundleName != "test image" || len(res.Values) != 2 || !res.Values[0].New || res.Signer != hex.EncodeToString(kid) {
		t.Fatalf("import result %+v", res)
	}
	k.mustAdmin("DELETE", adminapi.PathReferenceValues+"/tpm_pcr00", "", nil)
	rv := k.referenceValues()
	if got := rv.ReferenceValues["snp_launch_measurement"]; len(got) != 1 || got[0] != meas {
		t.Fatalf("stored %+v", rv.ReferenceValues)
	}
	if src := rv.Sources["snp_launch_measurement"][meas]; src.Bundle != res.Bundle || src.Signer != res.Signer {
		t.Fatalf("source %+v, want bundle %s", src, res.Bundle)
	}
	// A second import of the same bundle adds nothing new.
	json.Unmarshal(k.mustAdmin("POST", adminapi.PathReferenceImport, adminapi.ContentTypeCOSE, good), &res)
	if res.Values[0].New || len(k.referenceValues().ReferenceValues["sample_svn"]) != 1 {
		t.Fatalf("re-import: %+v", res)
	}

	// The audit line of an attestation names the bundle of the value that
	// matched: the sample guest reports svn "1".
	g := k.ecGuest()
	g.mustAttest()
	var page adminapi.AuditPage
	json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?limit=10", "", nil), &page)
	var svn *adminapi.Finding
	for _, e := range page.Entries {
		for i, f := range e.Findings {
			if e.Kind == adminapi.KindAttest && f.Claim == "sample.svn" {
				svn = &e.Findings[i]
			}
		}
	}
	if svn == nil || !svn.OK || svn.ReferenceName != "sample_svn" || svn.Source == nil || svn.Source.Bundle != res.Bundle {
		t.Fatalf("attest finding %+v: want sample.svn matched from bundle %s", svn, res.Bundle)
	}

	// A claim that matches none of the imported values: the audit line
	// names the bundles of the values it was compared with.
	other := signBundle(t, signer, refDoc(bundle.Value{Name: "sample_svn", Value: "7"}))
	k.mustAdmin("DELETE", adminapi.PathReferenceValues+"/sample_svn", "", nil)
	var res2 adminapi.ImportResult
	json.Unmarshal(k.mustAdmin("POST", adminapi.PathReferenceImport, adminapi.ContentTypeCOSE, other), &res2)
	g2 := k.ecGuest()
	g2.mustAttest()
	json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?limit=20", "", nil), &page)
	last := page.Entries[len(page.Entries)-1]
	var miss *adminapi.Finding
	for i, f := range last.Findings {
		if f.Claim == "sample.svn" {
			miss = &last.Findings[i]
		}
	}
	if miss == nil || miss.OK || len(miss.ReferenceBundles) != 1 || miss.ReferenceBundles[0] != res2.Bundle || miss.Source != nil {
		t.Fatalf("mismatching finding %+v: want reference_bundles [%s]", miss, res2.Bundle)
	}

	// Setting a name by hand forgets its bundle.
	k.mustAdmin("POST", adminapi.PathReferenceValues, "application/json", []byte(`{"name":"sample_svn","values":["1"]}`))
	if _, ok := k.referenceValues().Sources["sample_svn"]; ok {
		t.Fatal("a value set by hand still names a bundle")
	}
}

func TestReferenceValueImportDisabled(t *testing.T) {
	_, signer, _ := ed25519.GenerateKey(rand.Reader)
	k := startKBS(t, t.TempDir(), nil)
	st, b := k.adminDo(adminapi.RoleAdmin, "POST", adminapi.PathReferenceImport, adminapi.ContentTypeCOSE, signBundle(t, signer, refDoc(bundle.Value{Name: "a", Value: "1"})))
	p := wantProblem(t, st, b, 403, "reference-bundle-signer")
	if !strings.Contains(p.Detail, "--reference-value-signer") {
		t.Fatalf("detail %q does not say how to enable imports", p.Detail)
	}
}

func mustCBOR(t *testing.T, d bundle.Document) []byte {
	t.Helper()
	d.Version = bundle.Version
	b, err := cbor.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

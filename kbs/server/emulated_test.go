package server

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbs/verifier/sample"
)

// emulatedSample is the sample verifier marking its evidence emulated, as
// the snp and tdx verifiers do for evidence chained to an extra root.
type emulatedSample struct{ sample.Verifier }

func (v emulatedSample) Verify(ctx context.Context, ev json.RawMessage, rd, initdata []byte) (map[string]any, error) {
	claims, err := v.Verifier.Verify(ctx, ev, rd, initdata)
	if err == nil {
		claims["emulated"] = true
	}
	return claims, err
}

// TestEmulatedEvidenceIsAtMostWarning: even under a policy that affirms
// everything, emulated evidence is appraised "warning" (hardware 32), and
// every audit entry about it says emulated.
func TestEmulatedEvidenceIsAtMostWarning(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	k.srv.verifiers.Register(kbstypes.TeeSample, emulatedSample{})
	k.mustAdmin("POST", adminapi.PathAttestationPolicy, "application/json",
		policyBody("package policy\nhardware := 2\nexecutables := 3\nconfiguration := 2"))
	k.mustAdmin("POST", adminapi.PathResource+"default/key/one", "", []byte("v"))
	g := k.ecGuest()
	g.mustAttest()
	if st, _ := g.resource("default/key/one", ""); st != 403 {
		t.Fatalf("default resource policy released to emulated evidence: %d", st)
	}
	var page adminapi.AuditPage
	json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?kind=attest", "", nil), &page)
	if len(page.Entries) != 1 {
		t.Fatalf("attest entries %+v", page.Entries)
	}
	att := page.Entries[0]
	if att.Verdict != "warning" || att.TrustVector["hardware"] != 32 || !att.Emulated || !strings.Contains(att.Detail, "emulated") {
		t.Fatalf("attest entry %+v: want warning, hardware 32, emulated", att)
	}
	json.Unmarshal(k.mustAdmin("GET", adminapi.PathAudit+"?kind=release", "", nil), &page)
	if len(page.Entries) != 1 || !page.Entries[0].Emulated || page.Entries[0].Verdict != "deny" {
		t.Fatalf("release entries %+v", page.Entries)
	}
	for _, e := range []adminapi.AuditEntry{att, page.Entries[0]} {
		if line := adminclient.Explain(e); !strings.Contains(line, "emulated") {
			t.Errorf("audit line does not say emulated: %s", line)
		}
	}
}

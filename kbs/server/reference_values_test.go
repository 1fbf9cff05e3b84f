package server

import (
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/adminapi"
)

// TestReferenceValueRefusals: the handler refuses each mistake with 400, a
// JSON problem naming the reference value and the reason, and stores nothing.
func TestReferenceValueRefusals(t *testing.T) {
	k := startKBS(t, t.TempDir(), nil)
	meas := strings.Repeat("ab", 48)
	for _, c := range []struct {
		name, body, want string
	}{
		{"typo", `{"name":"snp_launch_measurment","values":["` + meas + `"]}`, `"snp_launch_measurment": unknown reference value: did you mean "snp_launch_measurement"?`},
		{"not hex", `{"name":"snp_launch_measurement","values":["nothex"]}`, `snp_launch_measurement[0]: "nothex" is not hex`},
		{"wrong length", `{"name":"tdx_mr_td","values":["` + strings.Repeat("ab", 32) + `"]}`, "tdx_mr_td[0]: has 64 hex digits (32 bytes): want lowercase hex of 96 digits"},
		{"upper case", `{"name":"tpm_pcr07","values":["` + strings.Repeat("AB", 32) + `"]}`, "upper-case hex"},
		{"empty value", `{"name":"init_data","values":[""]}`, "init_data[0]: is empty"},
		{"no values", `{"name":"sample_svn","values":[]}`, "kbsctl reference-value delete"},
		{"tcb out of range", `{"name":"snp_minimum_tcb_microcode","values":["256"]}`, "out of range"},
		{"unknown tcb status", `{"name":"tdx_tcb_status","values":["uptodate"]}`, "want one of UpToDate"},
		{"known name as custom", `{"name":"sample_svn","custom":true,"values":["1"]}`, "leave out custom"},
		{"duplicate", `{"name":"sample_svn","values":["1","1"]}`, "listed twice"},
	} {
		st, b := k.adminDo(adminapi.RoleAdmin, "POST", adminapi.PathReferenceValues, "application/json", []byte(c.body))
		p := wantProblem(t, st, b, 400, checkReferenceValue)
		if !strings.Contains(p.Detail, c.want) {
			t.Errorf("%s: detail %q, want %q", c.name, p.Detail, c.want)
		}
	}
	if rv := k.referenceValues(); len(rv.ReferenceValues) != 0 {
		t.Fatalf("refusals stored %+v", rv.ReferenceValues)
	}

	k.mustAdmin("POST", adminapi.PathReferenceValues, "application/json", []byte(`{"name":"snp_launch_measurement","values":["`+meas+`"]}`))
	k.mustAdmin("POST", adminapi.PathReferenceValues, "application/json", []byte(`{"name":"svn","custom":true,"values":["anything-my-policy-reads"]}`))
	if rv := k.referenceValues().ReferenceValues; len(rv["snp_launch_measurement"]) != 1 || len(rv["svn"]) != 1 {
		t.Fatalf("stored %+v", rv)
	}
	if st, b := k.adminDo(adminapi.RoleAuditor, "DELETE", adminapi.PathReferenceValues+"/svn", "", nil); st != 403 {
		t.Fatalf("auditor delete: %d %s", st, b)
	}
	k.mustAdmin("DELETE", adminapi.PathReferenceValues+"/svn", "", nil)
	st, b := k.adminDo(adminapi.RoleAdmin, "DELETE", adminapi.PathReferenceValues+"/svn", "", nil)
	wantProblem(t, st, b, 404, checkReferenceValue)
	if rv := k.referenceValues().ReferenceValues; len(rv) != 1 {
		t.Fatalf("after delete %+v", rv)
	}
}

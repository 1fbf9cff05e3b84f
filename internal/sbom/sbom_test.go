package sbom

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testBinary builds a small Go program that links one known module of
// this module's go.mod (google/uuid).
func testBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nimport \"github.com/google/uuid\"\n\nfunc main() { println(uuid.NewString()) }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "uuidprint")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestNew(t *testing.T) {
	bin := testBinary(t)
	opts := Options{Name: "cloak", Version: "v1.2.3", Created: time.Unix(1700000000, 0), Tool: "cloak-image test"}
	doc, err := New(opts, []string{bin})
	if err != nil {
		t.Fatal(err)
	}
	if doc.SPDXVersion != "SPDX-2.3" || doc.Name != "cloak-v1.2.3" || doc.CreationInfo.Created != "2023-11-14T22:13:20Z" {
		t.Errorf("header: %+v", doc)
	}
	byName := map[string]Package{}
	for _, p := range doc.Packages {
		byName[p.Name] = p
	}
	b, ok := byName["uuidprint"]
	if !ok || len(b.Checksums) != 1 || len(b.Checksums[0].ChecksumValue) != 64 || b.PrimaryPurpose != "APPLICATION" {
		t.Fatalf("binary package: %+v", b)
	}
	u, ok := byName["github.com/google/uuid"]
	if !ok || u.VersionInfo == "" || len(u.ExternalRefs) != 1 || u.ExternalRefs[0].ReferenceLocator != "pkg:golang/github.com/google/uuid@"+u.VersionInfo ||
		!strings.HasPrefix(u.Comment, "go.sum h1:") {
		t.Fatalf("module package: %+v", u)
	}
	if _, ok := byName["golang.org/toolchain"]; !ok {
		t.Error("no package for the Go toolchain")
	}
	var describes, dependsOnUUID bool
	for _, r := range doc.Relationships {
		describes = describes || (r.RelationshipType == "DESCRIBES" && r.RelatedSPDXElement == b.SPDXID)
		dependsOnUUID = dependsOnUUID || (r.SPDXElementID == b.SPDXID && r.RelationshipType == "DEPENDS_ON" && r.RelatedSPDXElement == u.SPDXID)
	}
	if !describes || !dependsOnUUID {
		t.Errorf("relationships: describes %v, binary depends on uuid %v", describes, dependsOnUUID)
	}
	ids := map[string]bool{}
	for _, p := range doc.Packages {
		if ids[p.SPDXID] || !strings.HasPrefix(p.SPDXID, "SPDXRef-") || strings.ContainsAny(strings.TrimPrefix(p.SPDXID, "SPDXRef-"), "/@ _") {
			t.Errorf("SPDXID %q: duplicate or not an SPDX idstring", p.SPDXID)
		}
		ids[p.SPDXID] = true
	}

	// Reproducible: the same binaries and options give the same bytes.
	one, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := New(opts, []string{bin})
	if err != nil {
		t.Fatal(err)
	}
	two, _ := again.Marshal()
	if !bytes.Equal(one, two) {
		t.Error("two documents of the same binaries differ")
	}
	var generic map[string]any
	if err := json.Unmarshal(one, &generic); err != nil || generic["spdxVersion"] != "SPDX-2.3" {
		t.Errorf("not SPDX JSON: %v", err)
	}
}

func TestNewRefuses(t *testing.T) {
	notGo := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notGo, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		opts Options
		bins []string
		want string
	}{
		"no name":      {Options{Version: "v1"}, []string{notGo}, "name and version"},
		"no binaries":  {Options{Name: "c", Version: "v1"}, nil, "no binaries"},
		"not a Go bin": {Options{Name: "c", Version: "v1"}, []string{notGo}, "not a Go binary"},
		"missing":      {Options{Name: "c", Version: "v1"}, []string{notGo + ".missing"}, "not a Go binary"},
	} {
		if _, err := New(tc.opts, tc.bins); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}

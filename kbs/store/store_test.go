package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cloak-containers/cloak/kbs/adminapi"
	"github.com/cloak-containers/cloak/kbstypes"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	p := kbstypes.ResourcePath{Repository: "default", Type: "key", Tag: "one"}
	now := time.Unix(1000, 0)
	if _, err := s.PutResource(p, []byte("secret-value"), now); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPolicy("resource", []byte("package x")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetReferenceValue("svn", []string{"1", "2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendAudit(adminapi.AuditEntry{Kind: adminapi.KindAttest, Verdict: "affirming", Check: "attestation-policy"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(filepath.Join(dir, DBFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "secret-value") {
		t.Fatal("resource value stored in plaintext")
	}

	s = open(t, dir)
	defer s.Close()
	v, err := s.GetResource(p)
	if err != nil || string(v) != "secret-value" {
		t.Fatalf("GetResource = %q, %v", v, err)
	}
	list, err := s.ListResources()
	if err != nil || len(list) != 1 || list[0].Path != "default/key/one" || list[0].Size != 12 || !list[0].Updated.Equal(now) {
		t.Fatalf("ListResources = %+v, %v", list, err)
	}
	if src, err := s.GetPolicy("resource"); err != nil || string(src) != "package x" {
		t.Fatalf("GetPolicy = %q, %v", src, err)
	}
	if rv, err := s.ReferenceValues(); err != nil || len(rv["svn"]) != 2 {
		t.Fatalf("ReferenceValues = %v, %v", rv, err)
	}
	if a, _, err := s.Audit(0, 10, ""); err != nil || len(a) != 1 || a[0].Seq != 1 || a[0].Verdict != "affirming" {
		t.Fatalf("Audit = %+v, %v", a, err)
	}
}

func TestResourceNotFoundAndDelete(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	p := kbstypes.ResourcePath{Repository: "r", Type: "t", Tag: "x"}
	if _, err := s.GetResource(p); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing resource: %v", err)
	}
	if err := s.DeleteResource(p); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if _, err := s.PutResource(p, []byte("v"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteResource(p); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetResource(p); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted resource: %v", err)
	}
	if _, err := s.PutResource(p, make([]byte, kbstypes.MaxResourceSize+1), time.Now()); err == nil {
		t.Fatal("oversized resource accepted")
	}
	if _, err := s.GetPolicy("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing policy: %v", err)
	}
	if err := s.SetReferenceValue("svn", []string{"1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetReferenceValue("svn", nil); err != nil {
		t.Fatal(err)
	}
	if rv, _ := s.ReferenceValues(); len(rv) != 0 {
		t.Fatalf("empty values should delete the name: %v", rv)
	}
}

// A value moved to another path must not decrypt: the path is the AAD.
func TestResourceBoundToPath(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	a := kbstypes.ResourcePath{Repository: "r", Type: "t", Tag: "a"}
	b := kbstypes.ResourcePath{Repository: "r", Type: "t", Tag: "b"}
	if _, err := s.PutResource(a, []byte("va"), time.Now()); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketResources)
		return bk.Put([]byte(b.String()), bk.Get([]byte(a.String())))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetResource(b); err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Fatalf("swapped value: %v", err)
	}
}

func TestAuditKindFilter(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	for _, kind := range []string{"release", "admin", "attest", "admin", "release", "release"} {
		if _, err := s.AppendAudit(adminapi.AuditEntry{Kind: kind}); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func(es []adminapi.AuditEntry) (out []uint64) {
		for _, e := range es {
			out = append(out, e.Seq)
		}
		return out
	}
	for _, tc := range []struct {
		after    uint64
		limit    int
		kind     string
		want     []uint64
		wantNext uint64
	}{
		{0, 10, "admin", []uint64{2, 4}, 6}, // next skips the releases after #4
		{0, 1, "admin", []uint64{2}, 2},     // a full page ends at its last entry
		{4, 10, "admin", nil, 6},            // nothing left, but no need to look again
		{0, 10, "", []uint64{1, 2, 3, 4, 5, 6}, 6},
		{6, 10, "admin", nil, 6},
	} {
		got, next, err := s.Audit(tc.after, tc.limit, tc.kind)
		if err != nil || !slices.Equal(seqs(got), tc.want) || next != tc.wantNext {
			t.Errorf("Audit(%d, %d, %q) = %v next %d, %v; want %v next %d", tc.after, tc.limit, tc.kind, seqs(got), next, err, tc.want, tc.wantNext)
		}
	}
}

func TestAuditPagingAndRetention(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	s.retention = 5
	for range 8 {
		if _, err := s.AppendAudit(adminapi.AuditEntry{Kind: adminapi.KindRelease, Verdict: "deny"}); err != nil {
			t.Fatal(err)
		}
	}
	all, _, err := s.Audit(0, 100, "")
	if err != nil || len(all) != 5 || all[0].Seq != 4 || all[4].Seq != 8 {
		t.Fatalf("after retention: %+v, %v", all, err)
	}
	page, _, err := s.Audit(5, 2, "")
	if err != nil || len(page) != 2 || page[0].Seq != 6 || page[1].Seq != 7 {
		t.Fatalf("page: %+v, %v", page, err)
	}
	if page, _, _ := s.Audit(^uint64(0), 2, ""); len(page) != 0 {
		t.Fatalf("after max: %+v", page)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Run("locked", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir)
		defer s.Close()
		_, err := Open(dir)
		if err == nil || !strings.Contains(err.Error(), "in use by another kbs process") {
			t.Fatalf("second open: %v", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, DBFile), []byte(strings.Repeat("garbage!", 2048)), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir)
		if err == nil || !strings.Contains(err.Error(), "kbs.db is corrupted") || !strings.Contains(err.Error(), "backup") {
			t.Fatalf("garbage db: %v", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir)
		if _, err := s.AppendAudit(adminapi.AuditEntry{Kind: adminapi.KindAttest}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if err := os.Truncate(filepath.Join(dir, DBFile), 100); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir)
		if err == nil || !strings.Contains(err.Error(), "corrupted") {
			t.Fatalf("truncated db: %v", err)
		}
	})
	t.Run("bad key file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("short"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir)
		if err == nil || !strings.Contains(err.Error(), "want 32") {
			t.Fatalf("bad key: %v", err)
		}
	})
}

// Concurrent appends are group-committed: every caller gets a distinct seq,
// and every entry is stored by the time its call returns.
func TestAuditConcurrentAppends(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	const n = 64
	seqs := make(chan uint64, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			seq, err := s.AppendAudit(adminapi.AuditEntry{Kind: adminapi.KindAttest, Session: fmt.Sprint(i)})
			if err != nil {
				errs <- err
				return
			}
			got, _, err := s.Audit(seq-1, 1, "")
			if err != nil || len(got) != 1 || got[0].Seq != seq || got[0].Session != fmt.Sprint(i) {
				errs <- fmt.Errorf("entry %d not readable right after append: %v %v", seq, got, err)
				return
			}
			seqs <- seq
		}()
	}
	seen := map[uint64]bool{}
	for range n {
		select {
		case err := <-errs:
			t.Fatal(err)
		case seq := <-seqs:
			if seen[seq] || seq < 1 || seq > n {
				t.Fatalf("seq %d duplicated or out of range", seq)
			}
			seen[seq] = true
		}
	}
}

func TestImportReferenceValuesAllOrNothing(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	src := adminapi.ReferenceValueSource{Bundle: "sha256:aa", Signer: "bb"}
	if err := s.SetReferenceValue("b", []string{"1"}); err != nil {
		t.Fatal(err)
	}
	// "b" would exceed its limit: "a" must not be stored either.
	_, err = s.ImportReferenceValues(map[string][]string{"a": {"x"}, "b": {"2", "3"}}, src, 2)
	if !errors.Is(err, ErrTooManyValues) {
		t.Fatalf("err %v, want ErrTooManyValues", err)
	}
	rv, _ := s.ReferenceValues()
	srcs, _ := s.ReferenceSources()
	if len(rv) != 1 || len(rv["b"]) != 1 || len(srcs) != 0 {
		t.Fatalf("after a refused import: values %v, sources %v", rv, srcs)
	}
	added, err := s.ImportReferenceValues(map[string][]string{"a": {"x"}, "b": {"1", "2"}}, src, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !added["a"]["x"] || added["b"]["1"] || !added["b"]["2"] {
		t.Errorf("added = %v", added)
	}
	got, err := s.ReferenceSource("b", "1")
	if err != nil || got == nil || got.Bundle != "sha256:aa" {
		t.Errorf("source of b=1: %+v, %v (an imported value takes the bundle as its source)", got, err)
	}
	if got, _ := s.ReferenceSource("b", "9"); got != nil {
		t.Errorf("source of an unknown value: %+v", got)
	}
}

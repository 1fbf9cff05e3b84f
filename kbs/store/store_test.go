package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cloak-containers/cloak/kbs/store/pgtest"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/session"
)

// backend is one Store implementation under the conformance suite.
type backend struct {
	name string
	// fresh prepares an empty store and returns how to open it (again).
	fresh func(t *testing.T) (open func(t *testing.T, o Options) (Store, error))
	// raw returns every stored byte of resources, to look for plaintext.
	raw func(t *testing.T, s Store) []byte
	// copySealed copies the stored value of one resource path to another.
	copySealed func(t *testing.T, s Store, from, to string)
	// setSchema overwrites the stored schema version.
	setSchema func(t *testing.T, s Store, v uint64)
}

func backends(t *testing.T) []backend {
	bbolt := backend{
		name: "bbolt",
		fresh: func(t *testing.T) func(*testing.T, Options) (Store, error) {
			dir := t.TempDir()
			return func(_ *testing.T, o Options) (Store, error) {
				o.DataDir = dir
				return Open(o)
			}
		},
		raw: func(t *testing.T, s Store) []byte {
			var out []byte
			s.(*Bolt).db.View(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketResources).ForEach(func(k, v []byte) error {
					out = append(out, v...)
					return nil
				})
			})
			return out
		},
		copySealed: func(t *testing.T, s Store, from, to string) {
			err := s.(*Bolt).db.Update(func(tx *bolt.Tx) error {
				bk := tx.Bucket(bucketResources)
				return bk.Put([]byte(to), bk.Get([]byte(from)))
			})
			if err != nil {
				t.Fatal(err)
			}
		},
		setSchema: func(t *testing.T, s Store, v uint64) {
			err := s.(*Bolt).db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint64(nil, v))
			})
			if err != nil {
				t.Fatal(err)
			}
		},
	}
	srv := pgtest.Start(t)
	exec := func(t *testing.T, s Store, sql string, args ...any) {
		if _, err := s.(*Postgres).pool.Exec(context.Background(), sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	pg := backend{
		name: "postgres",
		fresh: func(t *testing.T) func(*testing.T, Options) (Store, error) {
			dir, url := t.TempDir(), srv.NewDatabase(t)
			return func(_ *testing.T, o Options) (Store, error) {
				o.DataDir, o.URL = dir, url
				return Open(o)
			}
		},
		raw: func(t *testing.T, s Store) []byte {
			var out []byte
			err := s.(*Postgres).pool.QueryRow(context.Background(), `SELECT coalesce(string_agg(sealed, ''::bytea), ''::bytea) FROM resources`).Scan(&out)
			if err != nil {
				t.Fatal(err)
			}
			return out
		},
		copySealed: func(t *testing.T, s Store, from, to string) {
			exec(t, s, `INSERT INTO resources SELECT $2, updated, size, sealed FROM resources WHERE path = $1`, from, to)
		},
		setSchema: func(t *testing.T, s Store, v uint64) {
			exec(t, s, `UPDATE kbs_schema SET version = $1`, int64(v))
		},
	}
	return []backend{bbolt, pg}
}

// TestConformance runs the same tests against every backend.
func TestConformance(t *testing.T) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b backend)
	}{
		{"Persistence", testPersistence},
		{"ResourceNotFoundAndDelete", testResourceNotFoundAndDelete},
		{"ResourceBoundToPath", testResourceBoundToPath},
		{"AuditKindFilter", testAuditKindFilter},
		{"AuditPagingAndRetention", testAuditPagingAndRetention},
		{"AuditConcurrentAppends", testAuditConcurrentAppends},
		{"ImportReferenceValuesAllOrNothing", testImportReferenceValuesAllOrNothing},
		{"ReferenceValues", testReferenceValues},
		{"SchemaTooNew", testSchemaTooNew},
		{"Sessions", testSessions},
	}
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) { tc.fn(t, b) })
			}
		})
	}
}

// openFresh returns an empty store of b, closed at the end of t.
func openFresh(t *testing.T, b backend, o Options) Store {
	t.Helper()
	s, err := b.fresh(t)(t, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testPersistence(t *testing.T, b backend) {
	open := b.fresh(t)
	s, err := open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
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
	if raw := b.raw(t, s); len(raw) == 0 || strings.Contains(string(raw), "secret-value") {
		t.Fatalf("resource value not stored, or stored in plaintext: %q", raw)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
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

func testResourceNotFoundAndDelete(t *testing.T, b backend) {
	s := openFresh(t, b, Options{})
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
func testResourceBoundToPath(t *testing.T, bk backend) {
	s := openFresh(t, bk, Options{})
	a := kbstypes.ResourcePath{Repository: "r", Type: "t", Tag: "a"}
	b := kbstypes.ResourcePath{Repository: "r", Type: "t", Tag: "b"}
	if _, err := s.PutResource(a, []byte("va"), time.Now()); err != nil {
		t.Fatal(err)
	}
	bk.copySealed(t, s, a.String(), b.String())
	if _, err := s.GetResource(b); err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Fatalf("swapped value: %v", err)
	}
}

func testAuditKindFilter(t *testing.T, b backend) {
	s := openFresh(t, b, Options{})
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

func testAuditPagingAndRetention(t *testing.T, b backend) {
	s := openFresh(t, b, Options{AuditRetention: 5})
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

func open(t *testing.T, dir string) Store {
	t.Helper()
	s, err := Open(Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestOpenErrors(t *testing.T) {
	t.Run("locked", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir)
		defer s.Close()
		_, err := Open(Options{DataDir: dir})
		if err == nil || !strings.Contains(err.Error(), "in use by another kbs process") {
			t.Fatalf("second open: %v", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, DBFile), []byte(strings.Repeat("garbage!", 2048)), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Options{DataDir: dir})
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
		_, err := Open(Options{DataDir: dir})
		if err == nil || !strings.Contains(err.Error(), "corrupted") {
			t.Fatalf("truncated db: %v", err)
		}
	})
	t.Run("bad key file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("short"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Options{DataDir: dir})
		if err == nil || !strings.Contains(err.Error(), "want 32") {
			t.Fatalf("bad key: %v", err)
		}
	})
}

// Concurrent appends are group-committed: every caller gets a distinct seq,
// and every entry is stored by the time its call returns.
func testAuditConcurrentAppends(t *testing.T, b backend) {
	s := openFresh(t, b, Options{})
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

func testImportReferenceValuesAllOrNothing(t *testing.T, b backend) {
	s := openFresh(t, b, Options{})
	src := adminapi.ReferenceValueSource{Bundle: "sha256:aa", Signer: "bb"}
	if err := s.SetReferenceValue("b", []string{"1"}); err != nil {
		t.Fatal(err)
	}
	// "b" would exceed its limit: "a" must not be stored either.
	_, err := s.ImportReferenceValues(map[string][]string{"a": {"x"}, "b": {"2", "3"}}, src, 2)
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

func testReferenceValues(t *testing.T, b backend) {
	s := openFresh(t, b, Options{})
	if err := s.SetReferenceValue("svn", []string{"3", "1", "2"}); err != nil {
		t.Fatal(err)
	}
	srcA := adminapi.ReferenceValueSource{Bundle: "sha256:bb", Signer: "s"}
	srcB := adminapi.ReferenceValueSource{Bundle: "sha256:aa", Signer: "s"}
	if _, err := s.ImportReferenceValues(map[string][]string{"m": {"x"}}, srcA, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImportReferenceValues(map[string][]string{"m": {"y"}}, srcB, 10); err != nil {
		t.Fatal(err)
	}
	rv, err := s.ReferenceValues()
	if err != nil || !slices.Equal(rv["svn"], []string{"3", "1", "2"}) || !slices.Equal(rv["m"], []string{"x", "y"}) {
		t.Fatalf("ReferenceValues = %v, %v (order must be kept)", rv, err)
	}
	if bundles, err := s.ReferenceBundles("m"); err != nil || !slices.Equal(bundles, []string{"sha256:aa", "sha256:bb"}) {
		t.Fatalf("ReferenceBundles = %v, %v", bundles, err)
	}
	if srcs, err := s.ReferenceSources(); err != nil || len(srcs) != 1 || srcs["m"]["y"] != srcB {
		t.Fatalf("ReferenceSources = %v, %v", srcs, err)
	}
	// Setting by hand forgets the bundles.
	if err := s.SetReferenceValue("m", []string{"z"}); err != nil {
		t.Fatal(err)
	}
	if bundles, _ := s.ReferenceBundles("m"); len(bundles) != 0 {
		t.Fatalf("bundles after a set by hand: %v", bundles)
	}
}

// A KBS refuses a store whose schema a newer KBS wrote.
func testSchemaTooNew(t *testing.T, b backend) {
	open := b.fresh(t)
	s, err := open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b.setSchema(t, s, 99)
	s.Close()
	s, err = open(t, Options{})
	if err == nil {
		s.Close()
		t.Fatal("store with schema version 99 opened")
	}
	if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), "99") || !strings.Contains(err.Error(), "newer kbs") {
		t.Fatalf("err = %v, want ErrSchemaTooNew naming version 99 and what to do", err)
	}
}

func testSessions(t *testing.T, b backend) {
	st := openFresh(t, b, Options{})
	m := st.Sessions(time.Second, 3, nil)
	s, err := m.Create("sample")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ID) != 32 || s.Nonce == "" || time.Until(s.Expires) > 2*time.Second {
		t.Fatalf("session %+v", s)
	}
	if _, err := m.Attested(s.ID); !errors.Is(err, session.ErrNotAttested) {
		t.Fatalf("Attested before attest: %v", err)
	}
	if _, err := m.ConsumeNonce(s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ConsumeNonce(s.ID); !errors.Is(err, session.ErrNonceUsed) {
		t.Fatalf("second ConsumeNonce: %v, want ErrNonceUsed", err)
	}
	claims := map[string]any{"a": "b", "n": float64(1)}
	if err := m.MarkAttested(s.ID, "tok", []byte(`{"kty":"EC"}`), claims); err != nil {
		t.Fatal(err)
	}
	got, err := m.Attested(s.ID)
	if err != nil || got.Token != "tok" || string(got.TeePubKey) != `{"kty":"EC"}` || got.Claims["a"] != "b" || got.Claims["n"] != float64(1) {
		t.Fatalf("Attested = %+v, %v", got, err)
	}
	if _, err := m.Get("0123"); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("unknown session: %v", err)
	}
	for range 2 {
		if _, err := m.Create("sample"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Create("sample"); !errors.Is(err, session.ErrFull) {
		t.Fatalf("fourth session of 3: %v, want ErrFull", err)
	}
	if _, ok := m.(*session.Manager); ok {
		return // the in-memory clock is tested in kbs/session
	}
	// The database's clock expires sessions, and frees the table.
	time.Sleep(1100 * time.Millisecond)
	if _, err := m.Get(s.ID); !errors.Is(err, session.ErrExpired) {
		t.Fatalf("expired session: %v, want ErrExpired", err)
	}
	if _, err := m.Create("sample"); err != nil {
		t.Fatalf("create after expiry: %v", err)
	}
}

func TestOpenStorageURL(t *testing.T) {
	_, err := Open(Options{DataDir: t.TempDir(), URL: "mysql://root:hunter2@db/kbs"})
	if err == nil || !strings.Contains(err.Error(), "want bbolt") || !strings.Contains(err.Error(), "postgres://") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("unknown scheme: %v; want the choices named and the password redacted", err)
	}
	// Nothing listens on port 1: the error names the server, not the password.
	start := time.Now()
	_, err = Open(Options{DataDir: t.TempDir(), URL: "postgres://kbs:hunter2@127.0.0.1:1/kbs?sslmode=disable&connect_timeout=2"})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("unreachable PostgreSQL: %v; want the address named and the password redacted", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("open of an unreachable PostgreSQL took %v", time.Since(start))
	}
}

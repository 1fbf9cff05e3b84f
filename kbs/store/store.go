// Package store persists the KBS's state: resources (encrypted at rest with
// AES-256-GCM under storage.key in the data directory, AAD = path),
// policies, reference values, the audit log and, on a shared backend, the
// RCAR sessions.
//
// Two backends implement Store: Bolt, one bbolt file in the data directory
// for one machine (the default), and Postgres, a PostgreSQL database that
// several KBS replicas share. Both run versioned schema migrations when
// opened and refuse a schema newer than they know.
package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/keyfile"
	"github.com/cloak-containers/cloak/kbs/session"
)

// File names inside the data directory.
const (
	DBFile  = "kbs.db"
	KeyFile = "storage.key"
)

// DefaultAuditRetention is how many audit entries are kept; older ones are
// dropped as new ones arrive.
const DefaultAuditRetention = 100000

// ErrNotFound is returned for a missing resource or policy.
var ErrNotFound = errors.New("not found")

// ErrTooManyValues is returned when an import would give a name more values
// than the limit.
var ErrTooManyValues = errors.New("too many reference values")

// ErrUnavailable wraps failures to reach the backend (after the bounded
// retries): the request may succeed later, at this or another replica.
var ErrUnavailable = errors.New("storage unavailable")

// ErrSchemaTooNew is returned when the stored schema was written by a newer
// KBS than this one.
var ErrSchemaTooNew = errors.New("storage schema is newer than this kbs knows")

// Store is the KBS's persistent state. Every write is one transaction: it
// is stored whole or not at all.
type Store interface {
	// PutResource stores (replaces) a resource value.
	PutResource(p kbstypes.ResourcePath, value []byte, now time.Time) (adminapi.ResourceInfo, error)
	// GetResource returns a resource value, or ErrNotFound.
	GetResource(p kbstypes.ResourcePath) ([]byte, error)
	// DeleteResource deletes a resource, or returns ErrNotFound.
	DeleteResource(p kbstypes.ResourcePath) error
	// ListResources describes all resources, sorted by path.
	ListResources() ([]adminapi.ResourceInfo, error)

	// PutPolicy stores the source of a named policy.
	PutPolicy(name string, src []byte) error
	// GetPolicy returns the source of a named policy, or ErrNotFound.
	GetPolicy(name string) ([]byte, error)

	// SetReferenceValue replaces the values of a name; no values deletes
	// it. Values set by hand have no bundle: their sources are forgotten.
	SetReferenceValue(name string, values []string) error
	// ImportReferenceValues adds values (name -> values) to the stored
	// ones, each remembering src, in one transaction: all are stored or
	// none. A value already stored takes src as its new source. It reports
	// which were new.
	ImportReferenceValues(values map[string][]string, src adminapi.ReferenceValueSource, maxPerName int) (map[string]map[string]bool, error)
	// ReferenceSource returns the bundle a stored value came from, or nil
	// for a value set by hand.
	ReferenceSource(name, value string) (*adminapi.ReferenceValueSource, error)
	// ReferenceBundles returns the distinct bundles that values of name
	// were imported from, sorted.
	ReferenceBundles(name string) ([]string, error)
	// ReferenceSources returns the sources of every imported value:
	// [name][value].
	ReferenceSources() (map[string]map[string]adminapi.ReferenceValueSource, error)
	// ReferenceValues returns all reference values.
	ReferenceValues() (map[string][]string, error)

	// AppendAudit durably records an audit entry (assigning its seq)
	// before it returns.
	AppendAudit(e adminapi.AuditEntry) (uint64, error)
	// Audit returns up to limit entries with seq > after, oldest first,
	// only those of kind unless it is empty. next is the seq of the last
	// entry examined (after when none was): with a kind filter, entries of
	// other kinds past the last one returned were skipped and need no
	// second look.
	Audit(after uint64, limit int, kind string) (entries []adminapi.AuditEntry, next uint64, err error)

	// Sessions returns the RCAR session store of this backend.
	Sessions(ttl time.Duration, max int, now func() time.Time) session.Store
	// Shared reports whether other KBS processes may write this store, so
	// that state cached in memory (compiled policies) must be re-read.
	Shared() bool
	// Ping checks that the store answers.
	Ping(ctx context.Context) error
	// Close releases the store.
	Close() error
}

// Options configures Open.
type Options struct {
	// DataDir holds storage.key (and kbs.db for bbolt).
	DataDir string
	// URL selects the backend: "" or "bbolt" for DATA_DIR/kbs.db,
	// postgres://... or postgresql://... for PostgreSQL.
	URL string
	// AuditRetention is how many audit entries are kept
	// (DefaultAuditRetention if <= 0).
	AuditRetention int
}

// IsPostgresURL reports whether url selects the PostgreSQL backend.
func IsPostgresURL(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}

// Open opens (creating if needed) the store that o selects.
func Open(o Options) (Store, error) {
	switch {
	case o.URL == "" || o.URL == "bbolt":
		s, err := OpenBolt(o)
		if err != nil {
			return nil, err
		}
		return s, nil
	case IsPostgresURL(o.URL):
		s, err := OpenPostgres(context.Background(), o)
		if err != nil {
			return nil, err
		}
		return s, nil
	default:
		return nil, fmt.Errorf("--storage %q: want bbolt (the default, DATA_DIR/%s) or a postgres://USER@HOST:PORT/DB URL", redactURL(o.URL), DBFile)
	}
}

func (o Options) retention() uint64 {
	if o.AuditRetention <= 0 {
		return DefaultAuditRetention
	}
	return uint64(o.AuditRetention)
}

// sealer encrypts resource values under storage.key, bound to their path.
type sealer struct{ aead cipher.AEAD }

func loadSealer(dir string) (*sealer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dir, KeyFile)
	key, err := keyfile.LoadOrCreate(path, func() ([]byte, error) {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("generate storage key: %w", err)
		}
		return k, nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage key: %w", err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("storage key %s is %d bytes, want 32; restore it from backup (resources cannot be decrypted without it)", path, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("storage key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("storage key: %w", err)
	}
	return &sealer{aead: aead}, nil
}

// seal returns nonce || AES-256-GCM ciphertext of value, AAD = path.
func (s *sealer) seal(p kbstypes.ResourcePath, value []byte) ([]byte, error) {
	if len(value) > kbstypes.MaxResourceSize {
		return nil, fmt.Errorf("resource is %d bytes, limit is %d", len(value), kbstypes.MaxResourceSize)
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("resource nonce: %w", err)
	}
	return s.aead.Seal(nonce, nonce, value, []byte(p.String())), nil
}

func (s *sealer) open(p kbstypes.ResourcePath, sealed []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < ns {
		return nil, fmt.Errorf("resource %s: stored value truncated", p)
	}
	value, err := s.aead.Open(nil, sealed[:ns], sealed[ns:], []byte(p.String()))
	if err != nil {
		return nil, fmt.Errorf("resource %s: cannot decrypt stored value (wrong %s or tampered database): %w", p, KeyFile, err)
	}
	return value, nil
}

// auditQueue group-commits audit appends: while one caller commits, others
// queue, and the next commit writes all of them in one transaction (one
// fsync). Each handshake records two decisions, so committing them one by
// one would bound the KBS by flush latency. bbolt's own DB.Batch does the
// same but waits a fixed delay for company even when alone, which would add
// latency to every handshake on an idle KBS.
type auditQueue struct {
	mu       sync.Mutex
	queue    []*auditReq
	flushing bool
}

type auditReq struct {
	entry adminapi.AuditEntry
	seq   uint64
	err   error
	done  chan struct{}
}

// append queues e and returns once commit has stored it (or failed).
func (q *auditQueue) append(e adminapi.AuditEntry, commit func([]*auditReq) error) (uint64, error) {
	req := &auditReq{entry: e, done: make(chan struct{})}
	q.mu.Lock()
	q.queue = append(q.queue, req)
	if q.flushing {
		q.mu.Unlock()
		<-req.done
		return req.seq, req.err
	}
	q.flushing = true
	for len(q.queue) > 0 {
		batch := q.queue
		q.queue = nil
		q.mu.Unlock()
		err := commit(batch)
		for _, r := range batch {
			if err != nil {
				r.seq, r.err = 0, err
			}
			close(r.done)
		}
		q.mu.Lock()
	}
	q.flushing = false
	q.mu.Unlock()
	return req.seq, req.err
}

package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/session"
)

// lockTimeout bounds the wait for another process's lock on the database.
const lockTimeout = 2 * time.Second

// boltSchemaVersion is the layout of kbs.db this KBS writes: 1 is the
// buckets below. A database without a version is from before versioning,
// which is layout 1.
const boltSchemaVersion = 1

var (
	bucketResources = []byte("resources")
	bucketPolicies  = []byte("policies")
	bucketReference = []byte("reference-values")
	bucketAudit     = []byte("audit")
	// bucketSources maps name NUL value to the ReferenceValueSource of a
	// value imported from a signed bundle.
	bucketSources = []byte("reference-sources")
	// bucketMeta holds keySchema, the layout version.
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
	allBuckets = [][]byte{bucketResources, bucketPolicies, bucketReference, bucketAudit, bucketSources, bucketMeta}
)

// Bolt is the bbolt backend: one file, DATA_DIR/kbs.db, for one KBS
// process (bbolt locks it). Sessions stay in that process's memory.
type Bolt struct {
	db        *bolt.DB
	seal      *sealer
	retention uint64
	audit     auditQueue
}

// OpenBolt opens (creating if needed) DATA_DIR/kbs.db.
func OpenBolt(o Options) (*Bolt, error) {
	seal, err := loadSealer(o.DataDir)
	if err != nil {
		return nil, err
	}
	db, err := openDB(filepath.Join(o.DataDir, DBFile))
	if err != nil {
		return nil, err
	}
	return &Bolt{db: db, seal: seal, retention: o.retention()}, nil
}

// openDB opens the bbolt file and creates the buckets. bbolt may panic on
// some corrupted pages; that is turned into the same actionable error.
func openDB(path string) (db *bolt.DB, err error) {
	corrupt := func(cause any) error {
		return fmt.Errorf("database %s is corrupted (%v); restore it from a backup or move it away to start empty", path, cause)
	}
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				db.Close()
			}
			db, err = nil, corrupt(r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("data dir is in use by another kbs process (lock on %s); stop it or use another --data-dir", path)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
		return nil, corrupt(err)
	case err != nil:
		return nil, fmt.Errorf("open database %s: %w", path, corrupt(err))
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if raw := meta.Get(keySchema); raw != nil {
			if len(raw) != 8 {
				return fmt.Errorf("schema version is %d bytes, want 8", len(raw))
			}
			if v := binary.BigEndian.Uint64(raw); v > boltSchemaVersion {
				return fmt.Errorf("%w: %s has schema version %d, this kbs knows up to %d; run the newer kbs that wrote it, or restore a backup", ErrSchemaTooNew, path, v, boltSchemaVersion)
			}
		}
		return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, boltSchemaVersion))
	})
	if errors.Is(err, ErrSchemaTooNew) {
		db.Close()
		return nil, err
	}
	if err != nil {
		db.Close()
		return nil, corrupt(err)
	}
	return db, nil
}

// Close closes the database.
func (s *Bolt) Close() error { return s.db.Close() }

// Sessions returns an in-memory session table: bbolt serves one process.
func (s *Bolt) Sessions(ttl time.Duration, max int, now func() time.Time) session.Store {
	return session.NewManager(ttl, max, now)
}

// Shared is false: bbolt's file lock keeps other processes out.
func (s *Bolt) Shared() bool { return false }

// Ping always succeeds: the file is open for the life of the store.
func (s *Bolt) Ping(context.Context) error { return nil }

type resourceRecord struct {
	Updated time.Time `json:"updated"`
	Size    int       `json:"size"`
	Sealed  []byte    `json:"sealed"` // nonce || AES-256-GCM ciphertext, AAD = path
}

// PutResource stores (replaces) a resource value.
func (s *Bolt) PutResource(p kbstypes.ResourcePath, value []byte, now time.Time) (adminapi.ResourceInfo, error) {
	sealed, err := s.seal.seal(p, value)
	if err != nil {
		return adminapi.ResourceInfo{}, err
	}
	rec := resourceRecord{Updated: now.UTC(), Size: len(value), Sealed: sealed}
	data, err := json.Marshal(rec)
	if err != nil {
		return adminapi.ResourceInfo{}, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketResources).Put([]byte(p.String()), data)
	})
	if err != nil {
		return adminapi.ResourceInfo{}, fmt.Errorf("store resource %s: %w", p, err)
	}
	return adminapi.ResourceInfo{Path: p.String(), Size: rec.Size, Updated: rec.Updated}, nil
}

// GetResource returns a resource value, or ErrNotFound.
func (s *Bolt) GetResource(p kbstypes.ResourcePath) ([]byte, error) {
	var rec resourceRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketResources).Get([]byte(p.String()))
		if data == nil {
			return ErrNotFound
		}
		return json.Unmarshal(data, &rec)
	})
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", p, err)
	}
	return s.seal.open(p, rec.Sealed)
}

// DeleteResource deletes a resource, or returns ErrNotFound.
func (s *Bolt) DeleteResource(p kbstypes.ResourcePath) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketResources)
		if b.Get([]byte(p.String())) == nil {
			return fmt.Errorf("resource %s: %w", p, ErrNotFound)
		}
		return b.Delete([]byte(p.String()))
	})
}

// ListResources describes all resources, sorted by path.
func (s *Bolt) ListResources() ([]adminapi.ResourceInfo, error) {
	out := []adminapi.ResourceInfo{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketResources).ForEach(func(k, v []byte) error {
			var rec resourceRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("resource %s: %w", k, err)
			}
			out = append(out, adminapi.ResourceInfo{Path: string(k), Size: rec.Size, Updated: rec.Updated})
			return nil
		})
	})
	return out, err // bbolt iterates in key order, which is path order
}

// PutPolicy stores the source of a named policy.
func (s *Bolt) PutPolicy(name string, src []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPolicies).Put([]byte(name), src)
	})
}

// GetPolicy returns the source of a named policy, or ErrNotFound.
func (s *Bolt) GetPolicy(name string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPolicies).Get([]byte(name))
		if v == nil {
			return ErrNotFound
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// SetReferenceValue replaces the values of a name; no values deletes it.
// Values set by hand have no bundle: their sources are forgotten.
func (s *Bolt) SetReferenceValue(name string, values []string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := deleteSources(tx, name); err != nil {
			return err
		}
		b := tx.Bucket(bucketReference)
		if len(values) == 0 {
			return b.Delete([]byte(name))
		}
		data, err := json.Marshal(values)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), data)
	})
}

func sourceKey(name, value string) []byte { return []byte(name + "\x00" + value) }

func deleteSources(tx *bolt.Tx, name string) error {
	c := tx.Bucket(bucketSources).Cursor()
	prefix := []byte(name + "\x00")
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// ImportReferenceValues adds values (name -> values) to the stored ones,
// each remembering src, in one transaction: all are stored or none. A value
// already stored takes src as its new source. It reports which were new.
func (s *Bolt) ImportReferenceValues(values map[string][]string, src adminapi.ReferenceValueSource, maxPerName int) (map[string]map[string]bool, error) {
	srcJSON, err := json.Marshal(src)
	if err != nil {
		return nil, err
	}
	added := map[string]map[string]bool{}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, sb := tx.Bucket(bucketReference), tx.Bucket(bucketSources)
		for name, vals := range values {
			var cur []string
			if raw := b.Get([]byte(name)); raw != nil {
				if err := json.Unmarshal(raw, &cur); err != nil {
					return fmt.Errorf("reference value %s: %w", name, err)
				}
			}
			added[name] = map[string]bool{}
			for _, v := range vals {
				if !slices.Contains(cur, v) {
					cur = append(cur, v)
					added[name][v] = true
				}
				if err := sb.Put(sourceKey(name, v), srcJSON); err != nil {
					return err
				}
			}
			if len(cur) > maxPerName {
				return fmt.Errorf("%w: %s would have %d values, limit %d", ErrTooManyValues, name, len(cur), maxPerName)
			}
			data, err := json.Marshal(cur)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return added, nil
}

// ReferenceSource returns the bundle a stored value came from, or nil for a
// value set by hand.
func (s *Bolt) ReferenceSource(name, value string) (*adminapi.ReferenceValueSource, error) {
	var src *adminapi.ReferenceValueSource
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketSources).Get(sourceKey(name, value))
		if raw == nil {
			return nil
		}
		src = new(adminapi.ReferenceValueSource)
		return json.Unmarshal(raw, src)
	})
	return src, err
}

// ReferenceBundles returns the distinct bundles that values of name were
// imported from, sorted.
func (s *Bolt) ReferenceBundles(name string) ([]string, error) {
	seen := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSources).Cursor()
		prefix := []byte(name + "\x00")
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var src adminapi.ReferenceValueSource
			if err := json.Unmarshal(v, &src); err != nil {
				return fmt.Errorf("reference source %s: %w", k, err)
			}
			seen[src.Bundle] = true
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for b := range seen {
		out = append(out, b)
	}
	slices.Sort(out)
	return out, err
}

// ReferenceSources returns the sources of every imported value:
// [name][value].
func (s *Bolt) ReferenceSources() (map[string]map[string]adminapi.ReferenceValueSource, error) {
	out := map[string]map[string]adminapi.ReferenceValueSource{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSources).ForEach(func(k, v []byte) error {
			name, value, ok := bytes.Cut(k, []byte{0})
			if !ok {
				return fmt.Errorf("reference source key %q has no NUL", k)
			}
			var src adminapi.ReferenceValueSource
			if err := json.Unmarshal(v, &src); err != nil {
				return fmt.Errorf("reference source %s: %w", k, err)
			}
			if out[string(name)] == nil {
				out[string(name)] = map[string]adminapi.ReferenceValueSource{}
			}
			out[string(name)][string(value)] = src
			return nil
		})
	})
	return out, err
}

// ReferenceValues returns all reference values.
func (s *Bolt) ReferenceValues() (map[string][]string, error) {
	out := map[string][]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketReference).ForEach(func(k, v []byte) error {
			var vals []string
			if err := json.Unmarshal(v, &vals); err != nil {
				return fmt.Errorf("reference value %s: %w", k, err)
			}
			out[string(k)] = vals
			return nil
		})
	})
	return out, err
}

// AppendAudit durably records an audit entry; appends are group-committed.
func (s *Bolt) AppendAudit(e adminapi.AuditEntry) (uint64, error) {
	return s.audit.append(e, s.commitAudit)
}

func (s *Bolt) commitAudit(batch []*auditReq) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		for _, r := range batch {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			r.entry.Seq, r.seq = seq, seq
			data, err := json.Marshal(r.entry)
			if err != nil {
				return err
			}
			if err := b.Put(seqKey(seq), data); err != nil {
				return err
			}
			if seq > s.retention {
				// One entry dropped per append keeps the log at the bound.
				if err := b.Delete(seqKey(seq - s.retention)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("append audit entry: %w", err)
	}
	return nil
}

// Audit returns up to limit entries with seq > after, oldest first, only
// those of kind unless it is empty. next is the seq of the last entry
// examined (after when none was): with a kind filter, entries of other
// kinds past the last one returned were skipped and need no second look.
func (s *Bolt) Audit(after uint64, limit int, kind string) (entries []adminapi.AuditEntry, next uint64, err error) {
	out := []adminapi.AuditEntry{}
	next = after
	if after == math.MaxUint64 {
		return out, next, nil
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var e adminapi.AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("audit entry %d: %w", binary.BigEndian.Uint64(k), err)
			}
			next = binary.BigEndian.Uint64(k)
			if kind == "" || e.Kind == kind {
				out = append(out, e)
			}
		}
		return nil
	})
	return out, next, err
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}

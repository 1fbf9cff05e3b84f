package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

// Bounds on talking to PostgreSQL. An operation that fails because the
// connection is lost is retried with backoff until retryFor has passed;
// each attempt gets opTimeout.
const (
	opTimeout       = 5 * time.Second
	defaultRetryFor = 5 * time.Second
	maxRetryDelay   = time.Second
)

// Advisory lock keys (pg_advisory_xact_lock) of this schema.
const (
	lockMigrate   = 0x6b627301 // "kbs" 1: schema migrations
	lockAudit     = 0x6b627302 // audit appends: seq order = commit order
	lockReference = 0x6b627303 // reference-value writes (read-modify-write)
)

// migrations[i] takes the schema from version i to i+1. Never edit one
// that has shipped; append a new one.
var migrations = []string{
	`CREATE TABLE resources (
		path    text PRIMARY KEY,
		updated timestamptz NOT NULL,
		size    integer NOT NULL,
		sealed  bytea NOT NULL -- nonce || AES-256-GCM(storage.key, AAD = path)
	);
	CREATE TABLE policies (
		name   text PRIMARY KEY,
		source bytea NOT NULL
	);
	CREATE TABLE reference_values (
		name   text PRIMARY KEY,
		vals   text[] NOT NULL
	);
	CREATE TABLE reference_sources (
		name   text NOT NULL,
		value  text NOT NULL,
		source jsonb NOT NULL,
		PRIMARY KEY (name, value)
	);
	CREATE TABLE audit (
		seq   bigserial PRIMARY KEY,
		uid   bytea NOT NULL UNIQUE, -- random, makes a retried append idempotent
		kind  text NOT NULL,
		entry bytea NOT NULL -- JSON adminapi.AuditEntry without seq
	);
	CREATE TABLE sessions (
		id         text PRIMARY KEY,
		tee        text NOT NULL,
		nonce      text NOT NULL,
		nonce_used boolean NOT NULL DEFAULT false,
		attested   boolean NOT NULL DEFAULT false,
		expires    timestamptz NOT NULL,
		token      text,
		tee_pubkey bytea,
		claims     bytea
	);
	CREATE INDEX sessions_expires ON sessions (expires);`,
}

// SchemaVersion is the PostgreSQL schema version this KBS writes.
var SchemaVersion = len(migrations)

// Postgres is the PostgreSQL backend: any number of KBS replicas share one
// database; sessions live in it too, so any replica serves any step.
type Postgres struct {
	pool      *pgxpool.Pool
	seal      *sealer
	retention uint64
	retryFor  time.Duration
	audit     auditQueue
}

// redactURL drops the password from a connection URL for messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// OpenPostgres connects to o.URL, migrates the schema and returns the
// store. The database must be reachable now; later connection losses are
// retried.
func OpenPostgres(ctx context.Context, o Options) (*Postgres, error) {
	seal, err := loadSealer(o.DataDir)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		return nil, fmt.Errorf("--storage %s: %w", redactURL(o.URL), err)
	}
	if !strings.Contains(o.URL, "pool_max_conns") {
		cfg.MaxConns = 16
	}
	cfg.ConnConfig.ConnectTimeout = opTimeout
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("--storage %s: %w", redactURL(o.URL), err)
	}
	p := &Postgres{pool: pool, seal: seal, retention: o.retention(), retryFor: defaultRetryFor}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		if errors.Is(err, ErrSchemaTooNew) {
			return nil, fmt.Errorf("PostgreSQL %s: %w", redactURL(o.URL), err)
		}
		return nil, fmt.Errorf("PostgreSQL %s: %w; check that the server is up and the URL, user and password (PGPASSWORD or ~/.pgpass) are right", redactURL(o.URL), err)
	}
	return p, nil
}

// migrate brings the schema to SchemaVersion under an advisory lock, so
// replicas starting together migrate once.
func (p *Postgres) migrate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockMigrate); err != nil {
			return fmt.Errorf("connect and lock the schema: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS kbs_schema (version integer NOT NULL)`); err != nil {
			return fmt.Errorf("create kbs_schema: %w", err)
		}
		var v int
		err := tx.QueryRow(ctx, `SELECT version FROM kbs_schema`).Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, `INSERT INTO kbs_schema VALUES (0)`); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("read schema version: %w", err)
		}
		if v > SchemaVersion {
			return fmt.Errorf("%w: the database has schema version %d, this kbs knows up to %d; run the newer kbs that migrated it (or restore a backup taken before)", ErrSchemaTooNew, v, SchemaVersion)
		}
		for ; v < SchemaVersion; v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE kbs_schema SET version = $1`, SchemaVersion)
		return err
	})
}

// Close closes the connection pool.
func (p *Postgres) Close() error { p.pool.Close(); return nil }

// Shared is true: other replicas write the same database.
func (p *Postgres) Shared() bool { return true }

// Ping checks the database answers a query.
func (p *Postgres) Ping(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("%w: PostgreSQL unreachable: %w", ErrUnavailable, err)
	}
	return nil
}

// connectionLost reports whether err is a lost or refused connection (or a
// server shutting down), which may go away by itself.
func connectionLost(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &ce), errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	case errors.As(err, &pe):
		// 08: connection exception; 57P01-57P03: admin/crash shutdown,
		// cannot connect now (starting up).
		return strings.HasPrefix(pe.Code, "08") || slices.Contains([]string{"57P01", "57P02", "57P03"}, pe.Code)
	}
	return pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed")
}

// do runs fn, retrying while the connection is lost, for at most
// retryFor. A non-idempotent fn is retried only when the server cannot
// have seen it (pgconn.SafeToRetry or no connection at all), so an entry
// is never written twice.
func (p *Postgres) do(idempotent bool, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(p.retryFor)
	delay := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err := fn(ctx)
		cancel()
		if err == nil {
			return nil
		}
		var ce *pgconn.ConnectError
		retry := pgconn.SafeToRetry(err) || errors.As(err, &ce) || (idempotent && connectionLost(err))
		if !retry || time.Now().Add(delay).After(deadline) {
			if connectionLost(err) {
				return fmt.Errorf("%w: PostgreSQL unreachable (retried for %s): %w", ErrUnavailable, p.retryFor, err)
			}
			return err
		}
		time.Sleep(delay)
		delay = min(2*delay, maxRetryDelay)
	}
}

func (p *Postgres) PutResource(rp kbstypes.ResourcePath, value []byte, now time.Time) (adminapi.ResourceInfo, error) {
	sealed, err := p.seal.seal(rp, value)
	if err != nil {
		return adminapi.ResourceInfo{}, err
	}
	updated := now.UTC().Truncate(time.Microsecond) // PostgreSQL's precision
	err = p.do(true, func(ctx context.Context) error {
		_, err := p.pool.Exec(ctx, `INSERT INTO resources (path, updated, size, sealed) VALUES ($1, $2, $3, $4)
			ON CONFLICT (path) DO UPDATE SET updated = EXCLUDED.updated, size = EXCLUDED.size, sealed = EXCLUDED.sealed`,
			rp.String(), updated, len(value), sealed)
		return err
	})
	if err != nil {
		return adminapi.ResourceInfo{}, fmt.Errorf("store resource %s: %w", rp, err)
	}
	return adminapi.ResourceInfo{Path: rp.String(), Size: len(value), Updated: updated}, nil
}

func (p *Postgres) GetResource(rp kbstypes.ResourcePath) ([]byte, error) {
	var sealed []byte
	err := p.do(true, func(ctx context.Context) error {
		return p.pool.QueryRow(ctx, `SELECT sealed FROM resources WHERE path = $1`, rp.String()).Scan(&sealed)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", rp, err)
	}
	return p.seal.open(rp, sealed)
}

func (p *Postgres) DeleteResource(rp kbstypes.ResourcePath) error {
	var n int64
	err := p.do(true, func(ctx context.Context) error {
		tag, err := p.pool.Exec(ctx, `DELETE FROM resources WHERE path = $1`, rp.String())
		n = tag.RowsAffected()
		return err
	})
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("resource %s: %w", rp, err)
	}
	return nil
}

func (p *Postgres) ListResources() ([]adminapi.ResourceInfo, error) {
	var out []adminapi.ResourceInfo
	err := p.do(true, func(ctx context.Context) error {
		rows, _ := p.pool.Query(ctx, `SELECT path, size, updated FROM resources ORDER BY path COLLATE "C"`)
		var err error
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (adminapi.ResourceInfo, error) {
			var ri adminapi.ResourceInfo
			err := r.Scan(&ri.Path, &ri.Size, &ri.Updated)
			ri.Updated = ri.Updated.UTC()
			return ri, err
		})
		return err
	})
	if out == nil {
		out = []adminapi.ResourceInfo{}
	}
	return out, err
}

func (p *Postgres) PutPolicy(name string, src []byte) error {
	return p.do(true, func(ctx context.Context) error {
		_, err := p.pool.Exec(ctx, `INSERT INTO policies (name, source) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source`, name, src)
		return err
	})
}

func (p *Postgres) GetPolicy(name string) ([]byte, error) {
	var src []byte
	err := p.do(true, func(ctx context.Context) error {
		return p.pool.QueryRow(ctx, `SELECT source FROM policies WHERE name = $1`, name).Scan(&src)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return src, err
}

func (p *Postgres) SetReferenceValue(name string, values []string) error {
	return p.do(true, func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockReference); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM reference_sources WHERE name = $1`, name); err != nil {
				return err
			}
			if len(values) == 0 {
				_, err := tx.Exec(ctx, `DELETE FROM reference_values WHERE name = $1`, name)
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO reference_values (name, vals) VALUES ($1, $2)
				ON CONFLICT (name) DO UPDATE SET vals = EXCLUDED.vals`, name, values)
			return err
		})
	})
}

func (p *Postgres) ImportReferenceValues(values map[string][]string, src adminapi.ReferenceValueSource, maxPerName int) (map[string]map[string]bool, error) {
	srcJSON, err := json.Marshal(src)
	if err != nil {
		return nil, err
	}
	var added map[string]map[string]bool
	err = p.do(true, func(ctx context.Context) error {
		added = map[string]map[string]bool{}
		return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockReference); err != nil {
				return err
			}
			for name, vals := range values {
				var cur []string
				err := tx.QueryRow(ctx, `SELECT vals FROM reference_values WHERE name = $1`, name).Scan(&cur)
				if err != nil && !errors.Is(err, pgx.ErrNoRows) {
					return fmt.Errorf("reference value %s: %w", name, err)
				}
				added[name] = map[string]bool{}
				for _, v := range vals {
					if !slices.Contains(cur, v) {
						cur = append(cur, v)
						added[name][v] = true
					}
					if _, err := tx.Exec(ctx, `INSERT INTO reference_sources (name, value, source) VALUES ($1, $2, $3)
						ON CONFLICT (name, value) DO UPDATE SET source = EXCLUDED.source`, name, v, srcJSON); err != nil {
						return err
					}
				}
				if len(cur) > maxPerName {
					return fmt.Errorf("%w: %s would have %d values, limit %d", ErrTooManyValues, name, len(cur), maxPerName)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO reference_values (name, vals) VALUES ($1, $2)
					ON CONFLICT (name) DO UPDATE SET vals = EXCLUDED.vals`, name, cur); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return added, nil
}

func (p *Postgres) ReferenceSource(name, value string) (*adminapi.ReferenceValueSource, error) {
	var raw []byte
	err := p.do(true, func(ctx context.Context) error {
		return p.pool.QueryRow(ctx, `SELECT source FROM reference_sources WHERE name = $1 AND value = $2`, name, value).Scan(&raw)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	src := new(adminapi.ReferenceValueSource)
	if err := json.Unmarshal(raw, src); err != nil {
		return nil, fmt.Errorf("reference source %s=%s: %w", name, value, err)
	}
	return src, nil
}

func (p *Postgres) ReferenceBundles(name string) ([]string, error) {
	var out []string
	err := p.do(true, func(ctx context.Context) error {
		rows, _ := p.pool.Query(ctx, `SELECT DISTINCT source->>'bundle' FROM reference_sources WHERE name = $1`, name)
		var err error
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	slices.Sort(out)
	if out == nil {
		out = []string{}
	}
	return out, err
}

func (p *Postgres) ReferenceSources() (map[string]map[string]adminapi.ReferenceValueSource, error) {
	var out map[string]map[string]adminapi.ReferenceValueSource
	err := p.do(true, func(ctx context.Context) error {
		out = map[string]map[string]adminapi.ReferenceValueSource{}
		rows, _ := p.pool.Query(ctx, `SELECT name, value, source FROM reference_sources`)
		var name, value string
		var raw []byte
		_, err := pgx.ForEachRow(rows, []any{&name, &value, &raw}, func() error {
			var src adminapi.ReferenceValueSource
			if err := json.Unmarshal(raw, &src); err != nil {
				return fmt.Errorf("reference source %s=%s: %w", name, value, err)
			}
			if out[name] == nil {
				out[name] = map[string]adminapi.ReferenceValueSource{}
			}
			out[name][value] = src
			return nil
		})
		return err
	})
	return out, err
}

func (p *Postgres) ReferenceValues() (map[string][]string, error) {
	var out map[string][]string
	err := p.do(true, func(ctx context.Context) error {
		out = map[string][]string{}
		rows, _ := p.pool.Query(ctx, `SELECT name, vals FROM reference_values`)
		var name string
		var vals []string
		_, err := pgx.ForEachRow(rows, []any{&name, &vals}, func() error {
			out[name] = slices.Clone(vals)
			return nil
		})
		return err
	})
	return out, err
}

// AppendAudit durably records an audit entry; appends are group-committed,
// and serialised across replicas so that seq order is commit order (a
// reader paging by seq never skips an entry committed late).
func (p *Postgres) AppendAudit(e adminapi.AuditEntry) (uint64, error) {
	return p.audit.append(e, p.commitAudit)
}

func (p *Postgres) commitAudit(batch []*auditReq) error {
	uids := make([][]byte, len(batch))
	for i := range batch {
		uids[i] = make([]byte, 16)
		if _, err := rand.Read(uids[i]); err != nil {
			return fmt.Errorf("append audit entry: %w", err)
		}
	}
	// Idempotent by uid: a commit whose answer was lost with the
	// connection is retried without writing its entries twice.
	err := p.do(true, func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockAudit); err != nil {
				return err
			}
			var last int64
			for i, r := range batch {
				e := r.entry
				e.Seq = 0
				data, err := json.Marshal(e)
				if err != nil {
					return err
				}
				err = tx.QueryRow(ctx, `INSERT INTO audit (uid, kind, entry) VALUES ($1, $2, $3)
					ON CONFLICT (uid) DO UPDATE SET uid = EXCLUDED.uid RETURNING seq`, uids[i], e.Kind, data).Scan(&last)
				if err != nil {
					return err
				}
				r.seq = uint64(last)
			}
			_, err := tx.Exec(ctx, `DELETE FROM audit WHERE seq <= $1`, last-int64(p.retention))
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("append audit entry: %w", err)
	}
	return nil
}

func (p *Postgres) Audit(after uint64, limit int, kind string) ([]adminapi.AuditEntry, uint64, error) {
	out := []adminapi.AuditEntry{}
	next := after
	if after >= math.MaxInt64 {
		return out, next, nil
	}
	err := p.do(true, func(ctx context.Context) error {
		out, next = []adminapi.AuditEntry{}, after
		// One snapshot for the page and the last seq.
		return pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			rows, _ := tx.Query(ctx, `SELECT seq, entry FROM audit WHERE seq > $1 AND ($2 = '' OR kind = $2) ORDER BY seq LIMIT $3`,
				int64(after), kind, limit)
			var seq int64
			var raw []byte
			_, err := pgx.ForEachRow(rows, []any{&seq, &raw}, func() error {
				var e adminapi.AuditEntry
				if err := json.Unmarshal(raw, &e); err != nil {
					return fmt.Errorf("audit entry %d: %w", seq, err)
				}
				e.Seq = uint64(seq)
				out = append(out, e)
				return nil
			})
			if err != nil {
				return err
			}
			if len(out) == limit && limit > 0 {
				next = out[len(out)-1].Seq
				return nil
			}
			// Everything after was examined: next is the last entry.
			var maxSeq int64
			if err := tx.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM audit`).Scan(&maxSeq); err != nil {
				return err
			}
			next = max(after, uint64(maxSeq))
			return nil
		})
	})
	return out, next, err
}

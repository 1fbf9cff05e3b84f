package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cloak-containers/cloak/kbs/session"
)

// pgSessions keeps RCAR sessions in the sessions table, so that any replica
// serves any step of a handshake. Expiry is decided by the database's clock
// (now()), never a replica's, and the nonce is consumed by one UPDATE that
// only one transaction can win.
type pgSessions struct {
	p       *Postgres
	ttl     time.Duration
	max     int
	creates atomic.Uint64
}

// sweepEvery is how many creates pass between sweeps of expired sessions.
const sweepEvery = 256

// Sessions returns the session store in the database. now is ignored:
// expiry is the database's clock.
func (p *Postgres) Sessions(ttl time.Duration, max int, _ func() time.Time) session.Store {
	if ttl <= 0 {
		ttl = session.DefaultTTL
	}
	if max <= 0 {
		max = session.DefaultMaxSessions
	}
	return &pgSessions{p: p, ttl: ttl, max: max}
}

func (s *pgSessions) sweep(ctx context.Context) error {
	_, err := s.p.pool.Exec(ctx, `DELETE FROM sessions WHERE expires <= now()`)
	return err
}

func (s *pgSessions) Create(tee string) (session.Session, error) {
	sess, err := session.Fresh(tee)
	if err != nil {
		return session.Session{}, err
	}
	insert := func(ctx context.Context) error {
		// The bound counts live sessions of all replicas.
		return s.p.pool.QueryRow(ctx, `INSERT INTO sessions (id, tee, nonce, expires)
			SELECT $1, $2, $3, now() + make_interval(secs => $4)
			WHERE (SELECT count(*) FROM sessions WHERE expires > now()) < $5
			RETURNING expires`, sess.ID, sess.Tee, sess.Nonce, s.ttl.Seconds(), s.max).Scan(&sess.Expires)
	}
	err = s.p.do(false, func(ctx context.Context) error {
		if s.creates.Add(1)%sweepEvery == 0 {
			if err := s.sweep(ctx); err != nil {
				return err
			}
		}
		err := insert(ctx)
		if errors.Is(err, pgx.ErrNoRows) {
			if err := s.sweep(ctx); err != nil {
				return err
			}
			err = insert(ctx)
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return session.Session{}, fmt.Errorf("%w (%d across all replicas); retry later", session.ErrFull, s.max)
	}
	if err != nil {
		return session.Session{}, fmt.Errorf("create session: %w", err)
	}
	return sess, nil
}

const sessionColumns = `id, tee, nonce, attested, expires, coalesce(token, ''), tee_pubkey, claims`

func scanSession(row pgx.Row, extra ...any) (session.Session, error) {
	var sess session.Session
	var attested bool
	var pub, claims []byte
	dest := append([]any{&sess.ID, &sess.Tee, &sess.Nonce, &attested, &sess.Expires, &sess.Token, &pub, &claims}, extra...)
	if err := row.Scan(dest...); err != nil {
		return session.Session{}, err
	}
	if attested {
		sess.State = session.StateAttested
		sess.TeePubKey = pub
		if err := json.Unmarshal(claims, &sess.Claims); err != nil {
			return session.Session{}, fmt.Errorf("session claims: %w", err)
		}
	}
	return sess, nil
}

// lookup returns a session if it is live by the database's clock. An
// expired one stays until a sweep (in Create), so that every replica
// reports it as expired rather than unknown.
func (s *pgSessions) lookup(id string) (session.Session, error) {
	var sess session.Session
	var live bool
	err := s.p.do(true, func(ctx context.Context) error {
		var err error
		sess, err = scanSession(s.p.pool.QueryRow(ctx, `SELECT `+sessionColumns+`, expires > now() FROM sessions WHERE id = $1`, id), &live)
		return err
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return session.Session{}, session.ErrNotFound
	case err != nil:
		return session.Session{}, fmt.Errorf("read session: %w", err)
	case !live:
		return session.Session{}, session.ErrExpired
	}
	return sess, nil
}

func (s *pgSessions) Get(id string) (session.Session, error) { return s.lookup(id) }

func (s *pgSessions) ConsumeNonce(id string) (session.Session, error) {
	var sess session.Session
	// Not retried once sent: if the answer is lost the nonce may be spent,
	// and the guest starts again with a new session, never a second use.
	err := s.p.do(false, func(ctx context.Context) error {
		var err error
		sess, err = scanSession(s.p.pool.QueryRow(ctx, `UPDATE sessions SET nonce_used = true
			WHERE id = $1 AND expires > now() AND NOT nonce_used RETURNING `+sessionColumns, id))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := s.lookup(id); err != nil {
			return session.Session{}, err
		}
		return session.Session{}, session.ErrNonceUsed
	}
	if err != nil {
		return session.Session{}, fmt.Errorf("consume nonce: %w", err)
	}
	return sess, nil
}

func (s *pgSessions) MarkAttested(id, token string, teePubKey json.RawMessage, claims map[string]any) error {
	raw, err := json.Marshal(claims)
	if err != nil {
		return fmt.Errorf("session claims: %w", err)
	}
	var n int64
	err = s.p.do(true, func(ctx context.Context) error {
		tag, err := s.p.pool.Exec(ctx, `UPDATE sessions SET attested = true, token = $2, tee_pubkey = $3, claims = $4
			WHERE id = $1 AND expires > now()`, id, token, []byte(teePubKey), raw)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return fmt.Errorf("mark session attested: %w", err)
	}
	if n == 0 {
		_, err := s.lookup(id)
		if err == nil {
			err = session.ErrNotFound
		}
		return err
	}
	return nil
}

func (s *pgSessions) Attested(id string) (session.Session, error) {
	sess, err := s.lookup(id)
	if err != nil {
		return session.Session{}, err
	}
	if sess.State != session.StateAttested {
		return session.Session{}, session.ErrNotAttested
	}
	return sess, nil
}

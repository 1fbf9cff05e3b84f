// Package session holds the KBS's RCAR (request-challenge-attestation-
// response) sessions: a session is created by /kbs/v0/auth with a fresh
// nonce, attested at most once by /kbs/v0/attest, and then authorises
// resource requests until it expires. Store is the contract; Manager keeps
// sessions in one process's memory, and kbs/store's PostgreSQL backend
// keeps them in the database that all replicas share.
package session

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Defaults.
const (
	DefaultTTL         = 5 * time.Minute
	DefaultMaxSessions = 10000
)

// State of a session.
type State int

const (
	// StateAuth: challenge issued, waiting for evidence.
	StateAuth State = iota
	// StateAttested: evidence accepted; the session authorises resource requests.
	StateAttested
)

// Errors returned by Manager. The HTTP layer maps them to 401 (or 503 for ErrFull).
var (
	ErrNotFound    = errors.New("unknown session")
	ErrExpired     = errors.New("session expired")
	ErrNonceUsed   = errors.New("the nonce of this session was already used for an attestation")
	ErrNotAttested = errors.New("session is not attested")
	ErrFull        = errors.New("too many active sessions")
)

// Session is a snapshot of one session.
type Session struct {
	ID      string
	Tee     string
	Nonce   string // base64 (standard) of 32 random bytes
	State   State
	Expires time.Time
	// Set once attested.
	Token     string          // the EAR token issued
	TeePubKey json.RawMessage // the JWK the evidence bound
	Claims    map[string]any  // token claims, input of the resource policy

	nonceUsed bool
}

// Store holds sessions. Every method returns ErrNotFound or ErrExpired for
// a session that is not live; the nonce of a session can be consumed once,
// whichever process asks.
type Store interface {
	// Create starts a session for a TEE with a fresh id and nonce, or
	// returns ErrFull.
	Create(tee string) (Session, error)
	// Get returns a live session.
	Get(id string) (Session, error)
	// ConsumeNonce marks the session's nonce as used and returns the
	// session, or ErrNonceUsed if it already was.
	ConsumeNonce(id string) (Session, error)
	// MarkAttested records a successful attestation.
	MarkAttested(id, token string, teePubKey json.RawMessage, claims map[string]any) error
	// Attested returns a live, attested session, or ErrNotAttested.
	Attested(id string) (Session, error)
}

// Fresh returns a new session for tee with a random id and nonce; the
// caller sets Expires.
func Fresh(tee string) (Session, error) {
	id, err := random(16)
	if err != nil {
		return Session{}, err
	}
	nonce, err := random(32)
	if err != nil {
		return Session{}, err
	}
	return Session{ID: hex.EncodeToString(id), Tee: tee, Nonce: base64.StdEncoding.EncodeToString(nonce), State: StateAuth}, nil
}

// Manager holds the sessions in memory. The zero value is not usable; call NewManager.
type Manager struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu       sync.Mutex
	sessions map[string]*Session
}

// NewManager returns a manager whose sessions live ttl (DefaultTTL if <= 0),
// holding at most max sessions (DefaultMaxSessions if <= 0). now is the
// clock (time.Now if nil).
func NewManager(ttl time.Duration, max int, now func() time.Time) *Manager {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if max <= 0 {
		max = DefaultMaxSessions
	}
	if now == nil {
		now = time.Now
	}
	return &Manager{ttl: ttl, max: max, now: now, sessions: map[string]*Session{}}
}

// Create starts a session for a TEE with a fresh id and nonce. When the
// table is full it first drops expired sessions, then refuses with ErrFull.
func (m *Manager) Create(tee string) (Session, error) {
	fresh, err := Fresh(tee)
	if err != nil {
		return Session{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if len(m.sessions) >= m.max {
		m.sweepLocked(now)
		if len(m.sessions) >= m.max {
			return Session{}, fmt.Errorf("%w (%d); retry later", ErrFull, m.max)
		}
	}
	s := &fresh
	s.Expires = now.Add(m.ttl)
	m.sessions[s.ID] = s
	return *s, nil
}

// Get returns a live session.
func (m *Manager) Get(id string) (Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := m.liveLocked(id)
	if err != nil {
		return Session{}, err
	}
	return *s, nil
}

// ConsumeNonce marks the session's nonce as used and returns the session.
// Each nonce can back one attestation attempt only, so a captured attest
// request cannot be replayed, even if the first attempt failed.
func (m *Manager) ConsumeNonce(id string) (Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := m.liveLocked(id)
	if err != nil {
		return Session{}, err
	}
	if s.nonceUsed {
		return Session{}, ErrNonceUsed
	}
	s.nonceUsed = true
	return *s, nil
}

// MarkAttested records a successful attestation.
func (m *Manager) MarkAttested(id, token string, teePubKey json.RawMessage, claims map[string]any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := m.liveLocked(id)
	if err != nil {
		return err
	}
	s.State = StateAttested
	s.Token = token
	s.TeePubKey = teePubKey
	s.Claims = claims
	return nil
}

// Attested returns a live, attested session.
func (m *Manager) Attested(id string) (Session, error) {
	s, err := m.Get(id)
	if err != nil {
		return Session{}, err
	}
	if s.State != StateAttested {
		return Session{}, ErrNotAttested
	}
	return s, nil
}

// Len returns the number of sessions held, expired ones included.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

func (m *Manager) liveLocked(id string) (*Session, error) {
	s, ok := m.sessions[id]
	if !ok {
		return nil, ErrNotFound
	}
	if !m.now().Before(s.Expires) {
		delete(m.sessions, id)
		return nil, ErrExpired
	}
	return s, nil
}

func (m *Manager) sweepLocked(now time.Time) {
	for id, s := range m.sessions {
		if !now.Before(s.Expires) {
			delete(m.sessions, id)
		}
	}
}

func random(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("read random bytes: %w", err)
	}
	return b, nil
}

// Package server is the KBS's HTTP API: Trustee's KBS protocol 0.4.0
// (auth, attest, resource) plus the admin API of api/adminapi, with RFC 7807
// error bodies, audit records, Prometheus metrics and JSON logs.
package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/adminauth"
	"github.com/cloak-containers/cloak/kbs/session"
	"github.com/cloak-containers/cloak/kbs/store"
	"github.com/cloak-containers/cloak/kbs/token"
	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/sample"
	"github.com/cloak-containers/cloak/kbs/verifier/snp"
	"github.com/cloak-containers/cloak/kbs/verifier/tdx"
	"github.com/cloak-containers/cloak/kbs/verifier/tpm"
	"github.com/cloak-containers/cloak/policy"
)

// TokenKeyFile is the token signing key's file name in the data directory.
const TokenKeyFile = "token-key.pem"

// Config configures a Server. Zero values pick the defaults.
type Config struct {
	DataDir string
	// Storage selects the backend: "" (bbolt, DATA_DIR/kbs.db) or a
	// postgres:// URL shared by replicas (store.Open).
	Storage string
	// PolicyRefresh is how often a replica on a shared backend re-reads
	// the policies another replica may have set (default 500 ms).
	PolicyRefresh time.Duration
	AdminKeys     []ed25519.PublicKey // may do everything; with AuditorKeys, none: the admin API answers 403
	AuditorKeys   []ed25519.PublicKey // may only read (RoleAuditor), whatever their tokens claim
	SessionTTL    time.Duration       // default 5 min
	TokenTTL      time.Duration       // default 5 min
	MaxBodyBytes  int64               // default kbstypes.MaxRequestBody
	MaxSessions   int                 // default session.DefaultMaxSessions (per backend: all replicas together)
	// Per-client-address limits of /kbs/v0/auth and /kbs/v0/attest; the
	// zero value is DefaultRateLimit, PerSecond < 0 turns a limit off.
	AuthRateLimit, AttestRateLimit RateLimit
	// RateLimitLoopback applies the limits to loopback peers too.
	RateLimitLoopback bool
	Logger            *slog.Logger     // default: discard
	Now               func() time.Time // nil: time.Now
	SNP               snp.Options      // SEV-SNP verifier: collateral fetcher, extra roots, CRL mode
	TDX               tdx.Options      // TDX verifier; registered only with a collateral fetcher
	TPM               *tpm.Config      // vTPM verifier; registered only when set (it needs enrolled AKs)
	// ReferenceValueSigners may sign reference-value bundles; none: the
	// import route answers 403.
	ReferenceValueSigners []crypto.PublicKey
}

// Server is a KBS.
type Server struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	store     store.Store
	sessions  session.Store
	tokens    *token.Signer
	verifiers *verifier.Registry
	admin     *adminauth.Verifier
	metrics   *metrics
	handler   http.Handler

	// policyMu orders policy writes and refreshes, so a refresh that read
	// the store before a write cannot undo it; mu guards the fields.
	policyMu    sync.Mutex
	mu          sync.RWMutex
	attestation *policy.AttestationPolicy
	resource    *policy.ResourcePolicy
	// The stored sources the compiled policies came from (nil: default),
	// to recompile only what another replica changed.
	attestationRaw, resourceRaw []byte

	closeOnce sync.Once
	closeErr  error
	stop      chan struct{} // closed by Close: ends the policy refresh
	done      chan struct{} // closed when the refresh loop has returned
}

// Names under which policies are kept in the store.
const (
	storedAttestationPolicy = "attestation"
	storedResourcePolicy    = "resource"
)

// storedPolicy is the stored form of the attestation policy.
type storedPolicy struct {
	ID     string `json:"id"`
	Source []byte `json:"source"`
}

// New opens the data directory and returns a ready server.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("kbs: data directory not set (--data-dir)")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = kbstypes.MaxRequestBody
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	for _, l := range []*RateLimit{&cfg.AuthRateLimit, &cfg.AttestRateLimit} {
		if *l == (RateLimit{}) {
			*l = DefaultRateLimit
		}
	}
	if cfg.PolicyRefresh <= 0 {
		cfg.PolicyRefresh = 500 * time.Millisecond
	}
	st, err := store.Open(store.Options{DataDir: cfg.DataDir, URL: cfg.Storage})
	if err != nil {
		return nil, err
	}
	key, err := token.LoadOrCreateKey(filepath.Join(cfg.DataDir, TokenKeyFile))
	if err != nil {
		st.Close()
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		now:       now,
		store:     st,
		sessions:  st.Sessions(cfg.SessionTTL, cfg.MaxSessions, now),
		tokens:    token.NewSigner(key, cfg.TokenTTL, now),
		verifiers: verifier.NewRegistry(),
		admin:     adminauth.NewVerifier(adminKeys(cfg), now),
		metrics:   newMetrics(st),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	s.verifiers.Register(kbstypes.TeeSample, sample.Verifier{})
	snpVerifier, err := snp.New(cfg.SNP)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("snp verifier: %w", err)
	}
	s.verifiers.Register(kbstypes.TeeSNP, snpVerifier)
	if cfg.TDX.Collateral != nil {
		tdxVerifier, err := tdx.New(cfg.TDX)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("tdx verifier: %w", err)
		}
		s.verifiers.Register(kbstypes.TeeTDX, tdxVerifier)
	}
	if cfg.TPM != nil {
		tpmVerifier, err := tpm.New(*cfg.TPM)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("tpm verifier: %w", err)
		}
		s.verifiers.Register(kbstypes.TeeTPM, tpmVerifier)
	}
	if err := s.loadPolicies(); err != nil {
		st.Close()
		return nil, err
	}
	s.handler = s.routes()
	if st.Shared() {
		go s.refreshPolicies()
	} else {
		close(s.done)
	}
	return s, nil
}

// refreshPolicies re-reads the stored policies every PolicyRefresh, so a
// policy set at another replica is in force here within that time. A read
// that fails keeps the policies in force and is retried at the next tick.
func (s *Server) refreshPolicies() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.PolicyRefresh)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		// Logged when it starts and stops failing, not at every tick of
		// an outage.
		err := s.loadPolicies()
		switch {
		case err != nil && !failing:
			s.log.Warn("policy refresh failed; the policies in force stay until it succeeds", "err", err)
		case err == nil && failing:
			s.log.Info("policy refresh works again")
		}
		failing = err != nil
	}
}

// adminKeys pairs each configured key with the role it grants.
func adminKeys(cfg Config) []adminauth.Key {
	var keys []adminauth.Key
	for _, k := range cfg.AdminKeys {
		keys = append(keys, adminauth.Key{Public: k, Role: adminapi.RoleAdmin})
	}
	for _, k := range cfg.AuditorKeys {
		keys = append(keys, adminauth.Key{Public: k, Role: adminapi.RoleAuditor})
	}
	return keys
}

// loadPolicies compiles the stored policies (the defaults where none is
// stored), skipping those whose stored source has not changed.
func (s *Server) loadPolicies() error {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	rawAP, err := s.store.GetPolicy(storedAttestationPolicy)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("read attestation policy: %w", err)
	}
	rawRP, err := s.store.GetPolicy(storedResourcePolicy)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("read resource policy: %w", err)
	}
	s.mu.RLock()
	ap, rp := s.attestation, s.resource
	apSame := ap != nil && bytes.Equal(rawAP, s.attestationRaw)
	rpSame := rp != nil && bytes.Equal(rawRP, s.resourceRaw)
	s.mu.RUnlock()
	if apSame && rpSame {
		return nil
	}
	if !apSame {
		if ap, err = compileStoredAttestation(rawAP); err != nil {
			return err
		}
	}
	if !rpSame {
		src := rawRP
		if src == nil {
			src = policy.DefaultResourceSource()
		}
		if rp, err = policy.CompileResource(src); err != nil {
			return fmt.Errorf("compile resource policy: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attestation, s.attestationRaw = ap, rawAP
	s.resource, s.resourceRaw = rp, rawRP
	return nil
}

// compileStoredAttestation compiles the stored form of the attestation
// policy; nil is the default policy.
func compileStoredAttestation(raw []byte) (*policy.AttestationPolicy, error) {
	sp := storedPolicy{ID: "default", Source: policy.DefaultAttestationSource()}
	if raw != nil {
		if err := json.Unmarshal(raw, &sp); err != nil {
			return nil, fmt.Errorf("stored attestation policy: %w", err)
		}
	}
	ap, err := policy.CompileAttestation(sp.ID, sp.Source)
	if err != nil {
		return nil, fmt.Errorf("compile attestation policy: %w", err)
	}
	return ap, nil
}

// Handler returns the HTTP handler of the whole API.
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops the policy refresh and releases the store.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.closeErr = s.store.Close()
	})
	return s.closeErr
}

func (s *Server) policies() (*policy.AttestationPolicy, *policy.ResourcePolicy) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.attestation, s.resource
}

// audit records an entry of a refusal; a failure is logged, not returned,
// because the decision has already been made and the client must still get
// its answer.
func (s *Server) audit(ctx context.Context, e adminapi.AuditEntry) {
	if err := s.auditRequired(e); err != nil {
		s.logger(ctx).Error("audit write failed", "err", err)
	}
}

// auditRequired records the entry of something about to be granted (a
// token, a resource): the grant is acknowledged only once its record is
// stored, so a storage failure refuses it rather than leaving it unaudited.
func (s *Server) auditRequired(e adminapi.AuditEntry) error {
	e.Time = s.now().UTC()
	_, err := s.store.AppendAudit(e)
	return err
}

// Package server is the KBS's HTTP API: Trustee's KBS protocol 0.4.0
// (auth, attest, resource) plus the admin API of kbs/adminapi, with RFC 7807
// error bodies, audit records, Prometheus metrics and JSON logs.
package server

import (
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

	"github.com/cloak-containers/cloak/kbs/adminapi"
	"github.com/cloak-containers/cloak/kbs/adminauth"
	"github.com/cloak-containers/cloak/kbs/session"
	"github.com/cloak-containers/cloak/kbs/store"
	"github.com/cloak-containers/cloak/kbs/token"
	"github.com/cloak-containers/cloak/kbs/verifier"
	"github.com/cloak-containers/cloak/kbs/verifier/sample"
	"github.com/cloak-containers/cloak/kbs/verifier/snp"
	"github.com/cloak-containers/cloak/kbs/verifier/tdx"
	"github.com/cloak-containers/cloak/kbs/verifier/tpm"
	"github.com/cloak-containers/cloak/kbstypes"
	"github.com/cloak-containers/cloak/policy"
)

// TokenKeyFile is the token signing key's file name in the data directory.
const TokenKeyFile = "token-key.pem"

// Config configures a Server. Zero values pick the defaults.
type Config struct {
	DataDir      string
	AdminKeys    []ed25519.PublicKey // may do everything; with AuditorKeys, none: the admin API answers 403
	AuditorKeys  []ed25519.PublicKey // may only read (RoleAuditor), whatever their tokens claim
	SessionTTL   time.Duration       // default 5 min
	TokenTTL     time.Duration       // default 5 min
	MaxBodyBytes int64               // default kbstypes.MaxRequestBody
	MaxSessions  int                 // default session.DefaultMaxSessions
	Logger       *slog.Logger        // default: discard
	Now          func() time.Time    // nil: time.Now
	SNP          snp.Options         // SEV-SNP verifier: collateral fetcher, extra roots, CRL mode
	TDX          tdx.Options         // TDX verifier; registered only with a collateral fetcher
	TPM          *tpm.Config         // vTPM verifier; registered only when set (it needs enrolled AKs)
	// ReferenceValueSigners may sign reference-value bundles; none: the
	// import route answers 403.
	ReferenceValueSigners []crypto.PublicKey
}

// Server is a KBS.
type Server struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	store     *store.Store
	sessions  *session.Manager
	tokens    *token.Signer
	verifiers *verifier.Registry
	admin     *adminauth.Verifier
	metrics   *metrics
	handler   http.Handler

	mu          sync.RWMutex
	attestation *policy.AttestationPolicy
	resource    *policy.ResourcePolicy
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
	st, err := store.Open(cfg.DataDir)
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
		sessions:  session.NewManager(cfg.SessionTTL, cfg.MaxSessions, now),
		tokens:    token.NewSigner(key, cfg.TokenTTL, now),
		verifiers: verifier.NewRegistry(),
		admin:     adminauth.NewVerifier(adminKeys(cfg), now),
		metrics:   newMetrics(),
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
	return s, nil
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

func (s *Server) loadPolicies() error {
	ap, err := policy.CompileAttestation("default", policy.DefaultAttestationSource())
	if raw, gerr := s.store.GetPolicy(storedAttestationPolicy); gerr == nil {
		var sp storedPolicy
		if err := json.Unmarshal(raw, &sp); err != nil {
			return fmt.Errorf("stored attestation policy: %w", err)
		}
		ap, err = policy.CompileAttestation(sp.ID, sp.Source)
	} else if !errors.Is(gerr, store.ErrNotFound) {
		return fmt.Errorf("read attestation policy: %w", gerr)
	}
	if err != nil {
		return fmt.Errorf("compile attestation policy: %w", err)
	}
	src, err := s.store.GetPolicy(storedResourcePolicy)
	switch {
	case errors.Is(err, store.ErrNotFound):
		src = policy.DefaultResourceSource()
	case err != nil:
		return fmt.Errorf("read resource policy: %w", err)
	}
	rp, err := policy.CompileResource(src)
	if err != nil {
		return fmt.Errorf("compile resource policy: %w", err)
	}
	s.attestation, s.resource = ap, rp
	return nil
}

// Handler returns the HTTP handler of the whole API.
func (s *Server) Handler() http.Handler { return s.handler }

// Close releases the data directory.
func (s *Server) Close() error { return s.store.Close() }

func (s *Server) policies() (*policy.AttestationPolicy, *policy.ResourcePolicy) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.attestation, s.resource
}

// audit records an entry; a failure is logged, not returned, because the
// decision has already been made and the client must still get its answer.
func (s *Server) audit(ctx context.Context, e adminapi.AuditEntry) {
	e.Time = s.now().UTC()
	if _, err := s.store.AppendAudit(e); err != nil {
		s.logger(ctx).Error("audit write failed", "err", err)
	}
}

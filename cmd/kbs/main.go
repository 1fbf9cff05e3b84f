// Command kbs runs Cloak's Key Broker Service.
package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/internal/cmdline"
	"github.com/cloak-containers/cloak/internal/logging"
	"github.com/cloak-containers/cloak/kbs/adminauth"
	"github.com/cloak-containers/cloak/kbs/server"
	"github.com/cloak-containers/cloak/kbs/session"
	"github.com/cloak-containers/cloak/kbs/tlscert"
	"github.com/cloak-containers/cloak/kbs/verifier/collateral"
	"github.com/cloak-containers/cloak/kbs/verifier/snp"
	"github.com/cloak-containers/cloak/kbs/verifier/tdx"
	"github.com/cloak-containers/cloak/kbs/verifier/tpm"
	"github.com/cloak-containers/cloak/measurements/bundle"
)

type options struct {
	listen, dataDir, tlsCert, tlsKey, maxBody     string
	log                                           *logging.Options
	adminKeys, auditorKeys, tlsSANs, refSigners   []string
	insecureHTTP                                  bool
	collateralDir, collateralCache, snpCRL        string
	collateralOffline                             bool
	snpExtraRoots                                 []string
	tdxPCCSURL                                    string
	tdxExtraRoots                                 []string
	tpmTrustedAKs, tpmEKRoots, tpmEKIntermediates string
	sessionTTL, tokenTTL                          time.Duration
	config                                        *configFile
	storage                                       string
	maxSessions                                   int
	authRate, attestRate                          float64
	rateBurst                                     int
	rateLoopback                                  bool
}

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the KBS could not start or stopped with an error
	exitUsage   = 2 // the command line is wrong
)

// execute runs the command line args and returns the exit code; errors go
// to stderr, with the way to the usage for command-line mistakes.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage, err := cmdline.Execute(ctx, newCommand(), args, stdout, stderr)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "kbs:", err)
	if usage {
		fmt.Fprintln(stderr, "  run 'kbs --help' for usage")
		return exitUsage
	}
	return exitFailure
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "kbs (--data-dir DIR | --config FILE) [flags]",
		Short: "Cloak Key Broker Service (Trustee KBS protocol 0.4.0)",
		Example: `  # First start: creates DIR/tls/cert.pem (self-signed) and prints its fingerprint
  kbs --data-dir /var/lib/cloak-kbs --admin-public-key admin.pub

  # Your own certificate, listening on all interfaces
  kbs --listen 0.0.0.0:8443 --data-dir /var/lib/cloak-kbs --tls-cert kbs.crt --tls-key kbs.key \
      --admin-public-key alice.pub --admin-public-key bob.pub --auditor-public-key carol.pub

  # Local development without TLS
  kbs --listen 127.0.0.1:8080 --data-dir ./kbs-data --insecure-http

  # Settings from a TOML file whose keys are the flag names; the command line wins over it
  #   /etc/cloak/kbs.toml:
  #   data-dir = "/var/lib/cloak-kbs"
  #   listen = "0.0.0.0:8443"
  #   admin-public-key = ["/etc/cloak/alice.pub"]
  #   auditor-public-key = ["/etc/cloak/carol.pub"]
  #   session-ttl = "5m"
  kbs --config /etc/cloak/kbs.toml --log-level debug
  kill -HUP $(pidof kbs)   # applies edited admin and auditor keys without a restart`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.config.load(cmd.Flags()); err != nil {
				return err
			}
			// cobra's MarkFlagsRequiredTogether says only "missing [tls-key]".
			switch {
			case o.tlsCert != "" && o.tlsKey == "":
				return errors.New("--tls-cert needs --tls-key: add --tls-key FILE, the PEM private key of the certificate")
			case o.tlsKey != "" && o.tlsCert == "":
				return errors.New("--tls-key needs --tls-cert: add --tls-cert FILE, the PEM certificate chain of the key")
			}
			return o.log.Check()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	o.config = addConfigFlag(f)
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on (port 0 picks a free port)")
	f.StringVar(&o.dataDir, "data-dir", "", "directory for the database, keys and TLS certificate (required)")
	f.StringVar(&o.storage, "storage", "bbolt", "storage backend: bbolt (DATA_DIR/kbs.db, one process) or postgres://USER@HOST:PORT/DB?sslmode=verify-full shared by replicas (password in PGPASSWORD or ~/.pgpass)")
	f.StringArrayVar(&o.adminKeys, "admin-public-key", nil, "PEM Ed25519 public key whose tokens get the admin role: read and write (repeatable); with no admin or auditor key the admin API is disabled")
	f.StringArrayVar(&o.auditorKeys, "auditor-public-key", nil, "PEM Ed25519 public key whose tokens get the read-only auditor role, whatever role they claim (repeatable)")
	f.StringArrayVar(&o.refSigners, "reference-value-signer", nil, "PEM public key (Ed25519, ECDSA P-256/P-384) trusted to sign reference-value bundles for kbsctl reference-value import (repeatable)")
	f.BoolVar(&o.insecureHTTP, "insecure-http", false, "serve plain HTTP (development only)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate chain (default: self-signed in DATA_DIR/tls)")
	f.StringVar(&o.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringArrayVar(&o.tlsSANs, "tls-san", nil, "extra DNS name or IP for the self-signed certificate (repeatable)")
	f.DurationVar(&o.sessionTTL, "session-ttl", 5*time.Minute, "lifetime of an attestation session")
	f.DurationVar(&o.tokenTTL, "token-ttl", 5*time.Minute, "lifetime of an attestation token")
	f.IntVar(&o.maxSessions, "max-sessions", session.DefaultMaxSessions, "most attestation sessions open at once (all replicas together on PostgreSQL); beyond it auth answers 503 with Retry-After")
	f.Float64Var(&o.authRate, "rate-limit-auth", server.DefaultRateLimit.PerSecond, "POST /kbs/v0/auth requests per second per client address; beyond it 429 with Retry-After (0: no limit)")
	f.Float64Var(&o.attestRate, "rate-limit-attest", server.DefaultRateLimit.PerSecond, "POST /kbs/v0/attest requests per second per client address (0: no limit)")
	f.IntVar(&o.rateBurst, "rate-limit-burst", server.DefaultRateLimit.Burst, "requests a client address may make at once above the auth and attest rates")
	f.BoolVar(&o.rateLoopback, "rate-limit-loopback", false, "apply the rate limits to loopback clients too (by default local tools and benchmarks are exempt)")
	f.StringVar(&o.maxBody, "max-body", "2MiB", "largest request body (bytes, or with KiB/MiB suffix)")
	o.log = logging.Flags(f, logging.JSON)
	f.StringVar(&o.collateralDir, "collateral-dir", "", "offline attestation collateral (AMD KDS/Intel PCS files by URL path), consulted before the network")
	f.StringVar(&o.collateralCache, "collateral-cache-dir", "", "on-disk cache of fetched collateral (default DATA_DIR/collateral-cache)")
	f.BoolVar(&o.collateralOffline, "collateral-offline", false, "never fetch collateral from the network (air-gapped sites; needs --collateral-dir)")
	f.StringVar(&o.snpCRL, "snp-crl", "require", "AMD CRL check: require, if-available or skip")
	f.StringArrayVar(&o.snpExtraRoots, "snp-extra-root", nil, "PEM ASK+ARK of an extra (emulated-snp) root to trust; its evidence is marked emulated (repeatable)")
	f.StringVar(&o.tdxPCCSURL, "tdx-pccs-url", "", "fetch TDX collateral from this PCCS instead of Intel PCS (https://HOST:PORT)")
	f.StringArrayVar(&o.tdxExtraRoots, "tdx-extra-root", nil, "PEM root of an extra (emulated-tdx) PCK chain to trust; its evidence is marked emulated (repeatable)")
	f.StringVar(&o.tpmTrustedAKs, "tpm-trusted-aks", "", "directory of enrolled TPM attestation keys (*.pub, PEM); enables the tpm verifier")
	f.StringVar(&o.tpmEKRoots, "tpm-ek-roots", "", "PEM roots the TPM's EK certificate must chain to (with --tpm-trusted-aks)")
	f.StringVar(&o.tpmEKIntermediates, "tpm-ek-intermediates", "", "PEM intermediates of EK certificate chains")
	cmd.MarkFlagRequired("data-dir")
	cmd.MarkFlagsMutuallyExclusive("insecure-http", "tls-cert")
	return cmd
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			s, mult = n, m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--max-body %q: want a positive size like 2MiB", s)
	}
	return n * mult, nil
}

func run(ctx context.Context, o options, stderr io.Writer) error {
	log, err := o.log.New(stderr)
	if err != nil {
		return err
	}
	maxBody, err := parseSize(o.maxBody)
	if err != nil {
		return err
	}
	keys, err := loadAdminKeys("--admin-public-key", o.adminKeys)
	if err != nil {
		return err
	}
	auditorKeys, err := loadAdminKeys("--auditor-public-key", o.auditorKeys)
	if err != nil {
		return err
	}
	if len(keys) == 0 && len(auditorKeys) == 0 {
		log.Warn("no --admin-public-key or --auditor-public-key given: the admin API is disabled")
	}
	var refSigners []crypto.PublicKey
	for _, path := range o.refSigners {
		k, err := bundle.LoadPublicKey(path)
		if err != nil {
			return fmt.Errorf("--reference-value-signer: %w", err)
		}
		refSigners = append(refSigners, k)
	}
	crlMode, err := snp.ParseCRLMode(o.snpCRL)
	if err != nil {
		return fmt.Errorf("--snp-crl: %w", err)
	}
	extraRoots, err := snp.LoadRoots(o.snpExtraRoots)
	if err != nil {
		return fmt.Errorf("--snp-extra-root: %w", err)
	}
	if len(extraRoots) > 0 {
		log.Warn("trusting extra SNP roots: evidence chained to them is emulated and carries no hardware protection", "files", o.snpExtraRoots)
	}
	cacheDir := o.collateralCache
	if cacheDir == "" {
		cacheDir = filepath.Join(o.dataDir, "collateral-cache")
	}
	fetcher := collateral.New(collateral.Options{Dir: o.collateralDir, CacheDir: cacheDir, Offline: o.collateralOffline})
	tdxOpts := tdx.Options{Collateral: fetcher, PCSBaseURL: o.tdxPCCSURL}
	for _, path := range o.tdxExtraRoots {
		roots, err := tdx.LoadRoots(path)
		if err != nil {
			return fmt.Errorf("--tdx-extra-root: %w", err)
		}
		tdxOpts.ExtraRoots = append(tdxOpts.ExtraRoots, roots...)
	}
	if len(tdxOpts.ExtraRoots) > 0 {
		log.Warn("trusting extra TDX roots: evidence chained to them is emulated and carries no hardware protection", "files", o.tdxExtraRoots)
	}
	tpmCfg, err := tpmConfig(&o)
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		AuthRateLimit: rateLimit(o.authRate, o.rateBurst), AttestRateLimit: rateLimit(o.attestRate, o.rateBurst), MaxSessions: o.maxSessions,
		RateLimitLoopback: o.rateLoopback,
		DataDir:           o.dataDir, Storage: o.storage, AdminKeys: keys, AuditorKeys: auditorKeys, SessionTTL: o.sessionTTL, TokenTTL: o.tokenTTL,
		MaxBodyBytes: maxBody, Logger: log,
		SNP: snp.Options{Fetcher: fetcher, ExtraRoots: extraRoots, CRL: crlMode},
		TDX: tdxOpts, TPM: tpmCfg, ReferenceValueSigners: refSigners,
	})
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	httpSrv := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// A Bearer EAR token carries the guest's initdata claims (up to
		// kbstypes.MaxInitdataSize, 256 KiB, an agent policy among them),
		// base64url-encoded: 64 KiB refused a large policy's key fetch.
		MaxHeaderBytes: 1 << 20,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	scheme := "https"
	switch {
	case o.insecureHTTP:
		scheme = "http"
		log.Warn("serving plain HTTP (--insecure-http): tokens and session cookies travel unprotected; use only for local development")
	case o.tlsCert != "":
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		httpSrv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	default:
		sans := []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil {
			sans = append(sans, h)
		}
		cert, path, fp, err := tlscert.SelfSigned(o.dataDir, append(sans, o.tlsSANs...))
		if err != nil {
			ln.Close()
			return err
		}
		log.Info("using self-signed TLS certificate; pin it in clients with --kbs-cert/--cacert", "cert", path, "sha256", fp)
		httpSrv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if httpSrv.TLSConfig != nil {
		ln = tls.NewListener(ln, httpSrv.TLSConfig)
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer o.config.watch(ctx, log, srv)()
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(ln) }()
	fmt.Printf("kbs listening on %s://%s\n", scheme, ln.Addr())
	log.Info("kbs ready", "addr", ln.Addr().String(), "protocol", kbstypes.ProtocolVersion)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// rateLimit is a --rate-limit-* flag's limit; 0 turns it off.
func rateLimit(perSecond float64, burst int) server.RateLimit {
	if perSecond <= 0 {
		return server.RateLimit{PerSecond: -1}
	}
	return server.RateLimit{PerSecond: perSecond, Burst: burst}
}

// loadAdminKeys reads the PEM Ed25519 public keys of one role's flag.
func loadAdminKeys(flag string, paths []string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		k, err := adminauth.ParsePublicKey(data)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flag, path, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// tpmConfig is the tpm verifier's configuration from the flags; nil (no
// tpm verifier) without --tpm-trusted-aks.
func tpmConfig(o *options) (*tpm.Config, error) {
	if o.tpmTrustedAKs == "" {
		if o.tpmEKRoots != "" || o.tpmEKIntermediates != "" {
			return nil, errors.New("--tpm-ek-roots and --tpm-ek-intermediates need --tpm-trusted-aks (the enrolled attestation keys)")
		}
		return nil, nil
	}
	aks, err := tpm.LoadTrustedAKs(o.tpmTrustedAKs)
	if err != nil {
		return nil, fmt.Errorf("--tpm-trusted-aks: %w", err)
	}
	cfg := &tpm.Config{TrustedAKs: aks}
	if o.tpmEKRoots != "" {
		if cfg.EKRoots, err = tpm.LoadCertPool(o.tpmEKRoots); err != nil {
			return nil, fmt.Errorf("--tpm-ek-roots: %w", err)
		}
	}
	if o.tpmEKIntermediates != "" {
		if cfg.EKIntermediates, err = tpm.LoadCertPool(o.tpmEKIntermediates); err != nil {
			return nil, fmt.Errorf("--tpm-ek-intermediates: %w", err)
		}
	}
	return cfg, nil
}

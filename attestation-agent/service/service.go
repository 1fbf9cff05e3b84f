// Package service runs the attestation agent's gRPC services — ocicrypt's
// keyprovider and the local AttestationAgent API — on one unix socket that
// only the socket's owner (root in the guest) may use.
package service

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/keyprovider"
	"github.com/cloak-containers/cloak/attestation-agent/localapi"
)

// stopTimeout bounds how long a shutdown waits for calls in flight.
const stopTimeout = 10 * time.Second

// Config configures the services.
type Config struct {
	// Socket is the unix socket path. Its directory is created (0700) if
	// missing; a stale socket there is replaced.
	Socket string
	// KBS fetches resources and tokens; *rcar.Client implements it.
	KBS localapi.KBS
	// Provider produces evidence for GetEvidence.
	Provider evidence.Provider
	// Logger receives one line per call (method, code, duration; never
	// payloads). Nil means slog.Default().
	Logger *slog.Logger
}

// Server is a listening socket with both services registered.
type Server struct {
	path string
	l    net.Listener
	g    *grpc.Server
	log  *slog.Logger
}

// Listen creates the socket (mode 0600) and registers the services. Call
// Serve to answer calls.
func Listen(cfg Config) (*Server, error) {
	if cfg.Socket == "" || cfg.KBS == nil || cfg.Provider == nil {
		return nil, errors.New("service: socket path, KBS client and evidence provider are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := removeStale(cfg.Socket); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Socket, err)
	}
	// The socket hands out secrets: only its owner may connect.
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict socket %s to its owner: %w", cfg.Socket, err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(logCalls(log)))
	keyprovider.New(cfg.KBS).Register(g)
	localapi.New(cfg.KBS, cfg.Provider).Register(g)
	return &Server{path: cfg.Socket, l: l, g: g, log: log}, nil
}

// removeStale deletes a socket left by an agent that died, but refuses to
// replace a live one or anything that is not a socket.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket path %s exists and is not a socket; remove it or choose another --socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another process is serving on %s; stop it or choose another --socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.path }

// Serve answers calls until ctx is cancelled, then stops gracefully (calls
// in flight get stopTimeout to finish) and removes the socket.
func (s *Server) Serve(ctx context.Context) error {
	defer os.Remove(s.path)
	errc := make(chan error, 1)
	go func() { errc <- s.g.Serve(s.l) }()
	s.log.Info("attestation agent serving", "socket", s.path)
	select {
	case err := <-errc:
		return fmt.Errorf("serve on %s: %w", s.path, err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { s.g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopTimeout):
		s.g.Stop()
	}
	s.log.Info("attestation agent stopped", "socket", s.path)
	return nil
}

// Serve is Listen followed by Server.Serve.
func Serve(ctx context.Context, cfg Config) error {
	s, err := Listen(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

func logCalls(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		st := status.Convert(err)
		level := slog.LevelInfo
		if err != nil {
			level = slog.LevelWarn
		}
		log.Log(ctx, level, "call", "method", info.FullMethod, "code", st.Code().String(),
			"error", st.Message(), "duration", time.Since(start))
		return resp, err
	}
}

package keywrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"

	ocikeyprovider "github.com/containers/ocicrypt/keywrap/keyprovider"
	keyproviderpb "github.com/containers/ocicrypt/utils/keyprovider"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxRequestSize bounds the protocol input of one WrapKey call. ocicrypt
// sends the encryption config and a few hundred bytes of options.
const MaxRequestSize = 1 << 20

// Service implements ocicrypt's KeyProviderService for wrapping only.
type Service struct {
	keyproviderpb.UnimplementedKeyProviderServiceServer
	log *slog.Logger
}

// NewService returns the key provider service. A nil logger discards logs.
func NewService(log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{log: log}
}

// WrapKey wraps the layer options ocicrypt passes in keywrapparams.optsdata
// with the KEK named by this provider's parameters.
func (s *Service) WrapKey(_ context.Context, in *keyproviderpb.KeyProviderKeyWrapProtocolInput) (*keyproviderpb.KeyProviderKeyWrapProtocolOutput, error) {
	raw := in.GetKeyProviderKeyWrapProtocolInput()
	if len(raw) > MaxRequestSize {
		return nil, status.Errorf(codes.InvalidArgument, "key provider input is %d bytes, more than the %d allowed", len(raw), MaxRequestSize)
	}
	var req ocikeyprovider.KeyProviderKeyWrapProtocolInput
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "decode key provider input: %v", err)
	}
	if req.Operation != ocikeyprovider.OpKeyWrap {
		return nil, status.Errorf(codes.InvalidArgument, "operation %q: WrapKey wants %q", req.Operation, ocikeyprovider.OpKeyWrap)
	}
	if req.KeyWrapParams.Ec == nil {
		return nil, status.Error(codes.InvalidArgument, "key provider input has no encryption config (keywrapparams.ec)")
	}
	all := req.KeyWrapParams.Ec.Parameters[ProviderName]
	if len(all) != 1 {
		return nil, status.Errorf(codes.InvalidArgument,
			"got %d parameter sets for provider %s, want exactly one: --encryption-key provider:%s:keypath=FILE;kid=kbs:///REPO/TYPE/TAG",
			len(all), ProviderName, ProviderName)
	}
	params, err := ParseParams(string(all[0]))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	kek, err := readKEK(params.KeyPath)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	annotation, err := Wrap(params.KID, kek, req.KeyWrapParams.OptsData)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	out, err := json.Marshal(ocikeyprovider.KeyProviderKeyWrapProtocolOutput{
		KeyWrapResults: ocikeyprovider.KeyWrapResults{Annotation: annotation},
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode key provider output: %v", err)
	}
	s.log.Info("wrapped layer key", "kid", params.KID)
	return &keyproviderpb.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: out}, nil
}

// UnWrapKey is refused on the host: only the guest's attestation agent,
// after attestation, ever holds the KEK needed to unwrap.
func (s *Service) UnWrapKey(context.Context, *keyproviderpb.KeyProviderKeyWrapProtocolInput) (*keyproviderpb.KeyProviderKeyWrapProtocolOutput, error) {
	return nil, status.Error(codes.Unimplemented, "UnWrapKey is served only by the guest's attestation agent; the host-side key provider only wraps")
}

// readKEK reads a key-encryption key file: exactly 32 raw bytes.
func readKEK(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read KEK: %w", err)
	}
	defer f.Close()
	kek, err := io.ReadAll(io.LimitReader(f, KEKSize+1))
	if err != nil {
		return nil, fmt.Errorf("read KEK %s: %w", path, err)
	}
	if len(kek) != KEKSize {
		got := fmt.Sprint(len(kek))
		if len(kek) > KEKSize {
			got = "more" // only KEKSize+1 bytes were read
		}
		return nil, fmt.Errorf("KEK file %s: want exactly %d raw bytes (e.g. head -c 32 /dev/urandom > %s), got %s",
			path, KEKSize, path, got)
	}
	return kek, nil
}

// Serve runs the key provider on a unix socket until ctx is done. The socket
// is made mode 0600 and removed on return. A stale socket left by a crashed run is
// replaced; any other file at socketPath is an error.
func Serve(ctx context.Context, socketPath string, log *slog.Logger) error {
	if fi, err := os.Lstat(socketPath); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("socket path %s exists and is not a socket; choose another --socket", socketPath)
		}
		if err := os.Remove(socketPath); err != nil {
			return fmt.Errorf("remove stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("socket path: %w", err)
	}
	lis, err := net.Listen("unix", socketPath)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socketPath, err)
	}
	defer os.Remove(socketPath)
	// The socket wraps under whatever KEK file a caller names, so only its
	// owner may connect. (The umask is process-wide, so chmod instead.)
	if err := os.Chmod(socketPath, 0o600); err != nil {
		lis.Close()
		return fmt.Errorf("restrict socket %s: %w", socketPath, err)
	}

	srv := grpc.NewServer(grpc.MaxRecvMsgSize(MaxRequestSize + 1024))
	keyproviderpb.RegisterKeyProviderServiceServer(srv, NewService(log))
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			srv.GracefulStop()
		case <-done:
		}
	}()
	err = srv.Serve(lis)
	close(done)
	if err != nil {
		return fmt.Errorf("serve key provider: %w", err)
	}
	return nil
}

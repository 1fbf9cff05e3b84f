package service

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ocikp "github.com/containers/ocicrypt/keywrap/keyprovider"
	ocigrpc "github.com/containers/ocicrypt/utils/keyprovider"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/attestationv1"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
)

type fakeKBS struct{}

func (fakeKBS) GetResource(context.Context, kbstypes.ResourcePath) ([]byte, error) {
	return []byte("v"), nil
}
func (fakeKBS) Token(context.Context) (string, error) { return "t", nil }

func socketPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "svc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "aa.sock")
}

func config(path string) Config {
	return Config{Socket: path, KBS: fakeKBS{}, Provider: sample.New(""), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func TestServeBothServicesOnOneSocket(t *testing.T) {
	path := socketPath(t)
	s, err := Listen(config(path))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want 0600", fi.Mode().Perm())
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()

	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tok, err := attestationv1.NewAttestationAgentClient(cc).GetToken(ctx, &attestationv1.GetTokenRequest{})
	if err != nil || tok.GetToken() != "t" {
		t.Fatalf("GetToken = %v, %v", tok, err)
	}
	in, _ := json.Marshal(ocikp.KeyProviderKeyWrapProtocolInput{Operation: ocikp.OpKeyUnwrap, KeyUnwrapParams: ocikp.KeyUnwrapParams{Annotation: []byte("{}")}})
	_, err = ocigrpc.NewKeyProviderServiceClient(cc).UnWrapKey(ctx, &ocigrpc.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: in})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("keyprovider UnWrapKey({}) = %v, want InvalidArgument from the keyprovider service", err)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still present after shutdown: %v", err)
	}
}

func TestSocketPathChecks(t *testing.T) {
	t.Run("stale socket replaced", func(t *testing.T) {
		path := socketPath(t)
		_ = os.MkdirAll(filepath.Dir(path), 0o700)
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close() // leaves the socket file behind, as a crashed agent does
		s, err := Listen(config(path))
		if err != nil {
			t.Fatalf("Listen over stale socket: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.Serve(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("live socket kept", func(t *testing.T) {
		path := socketPath(t)
		_ = os.MkdirAll(filepath.Dir(path), 0o700)
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, err = Listen(config(path))
		if err == nil || !strings.Contains(err.Error(), "another process is serving") {
			t.Fatalf("Listen error = %v, want refusal", err)
		}
	})
	t.Run("regular file kept", func(t *testing.T) {
		path := socketPath(t)
		_ = os.MkdirAll(filepath.Dir(path), 0o700)
		if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Listen(config(path))
		if err == nil || !strings.Contains(err.Error(), "is not a socket") {
			t.Fatalf("Listen error = %v, want refusal", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Error("regular file was modified")
		}
	})
	t.Run("missing config", func(t *testing.T) {
		if _, err := Listen(Config{Socket: socketPath(t)}); err == nil {
			t.Fatal("Listen without KBS and provider succeeded")
		}
	})
}

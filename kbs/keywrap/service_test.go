package keywrap

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	ocikeyprovider "github.com/containers/ocicrypt/keywrap/keyprovider"
	keyproviderpb "github.com/containers/ocicrypt/utils/keyprovider"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	annotation "github.com/cloak-containers/cloak/api/keyprovider"
	"github.com/cloak-containers/cloak/internal/testutil"
)

const annotationID = "org.opencontainers.image.enc.keys.provider.attestation-agent"

func writeKEK(t *testing.T, kek []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(path, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// shortSocketPath keeps unix socket paths under the 108-byte sun_path limit,
// which t.TempDir's long names can exceed.
func shortSocketPath(t *testing.T, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}

// startServe runs Serve in the background and stops it when the test ends.
func startServe(t *testing.T, sock string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, sock, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind (stat err %v)", sock, err)
		}
	})
	testutil.Eventually(t, 5*time.Second, "key provider socket "+sock+" accepts connections", func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// guestUnwrapper plays the guest's attestation agent in tests: it answers
// UnWrapKey with a KEK it already holds.
type guestUnwrapper struct {
	keyproviderpb.UnimplementedKeyProviderServiceServer
	kek []byte
}

func (g guestUnwrapper) UnWrapKey(_ context.Context, in *keyproviderpb.KeyProviderKeyWrapProtocolInput) (*keyproviderpb.KeyProviderKeyWrapProtocolOutput, error) {
	var req ocikeyprovider.KeyProviderKeyWrapProtocolInput
	if err := json.Unmarshal(in.GetKeyProviderKeyWrapProtocolInput(), &req); err != nil {
		return nil, err
	}
	var a wireAnnotation
	if err := json.Unmarshal(req.KeyUnwrapParams.Annotation, &a); err != nil {
		return nil, err
	}
	iv, _ := base64.StdEncoding.DecodeString(a.IV)
	sealed, _ := base64.StdEncoding.DecodeString(a.WrappedData)
	block, _ := aes.NewCipher(g.kek)
	aead, _ := cipher.NewGCM(block)
	opts, err := aead.Open(nil, iv, sealed, nil)
	if err != nil {
		return nil, err
	}
	out, _ := json.Marshal(ocikeyprovider.KeyProviderKeyWrapProtocolOutput{
		KeyUnwrapResults: ocikeyprovider.KeyUnwrapResults{OptsData: opts},
	})
	return &keyproviderpb.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: out}, nil
}

func startGuestUnwrapper(t *testing.T, sock string, kek []byte) {
	t.Helper()
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	keyproviderpb.RegisterKeyProviderServiceServer(srv, guestUnwrapper{kek: kek})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
}

// TestEncryptLayerThroughProvider encrypts a real layer with ocicrypt, which
// calls Serve's socket over gRPC exactly as skopeo would, then decrypts it
// with a guest-style unwrapper holding the same KEK.
func TestEncryptLayerThroughProvider(t *testing.T) {
	kek := bytes.Repeat([]byte{0x42}, 32)
	kekPath := writeKEK(t, kek)
	sock := shortSocketPath(t, "kp.sock")
	startServe(t, sock)

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %o, want 600", fi.Mode().Perm())
	}

	ocicrypt.RegisterKeyWrapper("provider."+ProviderName,
		ocikeyprovider.NewKeyWrapper(ProviderName, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + sock}))

	layer := []byte("layer.tar contents that must stay confidential")
	desc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayer,
		Digest:    digest.FromBytes(layer),
		Size:      int64(len(layer)),
	}
	cc, err := config.EncryptWithKeyProvider([][]byte{
		[]byte(ProviderName + ":keypath=" + kekPath + ";kid=kbs:///default/image-kek/1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	encReader, finalize, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(layer), desc)
	if err != nil {
		t.Fatal(err)
	}
	encrypted, err := io.ReadAll(encReader)
	if err != nil {
		t.Fatal(err)
	}
	annotations, err := finalize()
	if err != nil {
		t.Fatalf("finalize (calls WrapKey): %v", err)
	}
	if bytes.Contains(encrypted, layer) {
		t.Fatal("encrypted layer contains the plaintext")
	}

	b64 := annotations[annotationID]
	if b64 == "" {
		t.Fatalf("no %s annotation in %v", annotationID, annotations)
	}
	annJSON, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	var a wireAnnotation
	if err := json.Unmarshal(annJSON, &a); err != nil {
		t.Fatal(err)
	}
	if a.KID != "kbs:///default/image-kek/1" || a.WrapType != "A256GCM" {
		t.Errorf("annotation = %+v", a)
	}
	var opts struct {
		SymKey []byte        `json:"symkey"`
		Digest digest.Digest `json:"digest"`
	}
	if err := json.Unmarshal(open(t, kek, annJSON), &opts); err != nil || len(opts.SymKey) != 32 || opts.Digest != desc.Digest {
		t.Fatalf("unwrapped data is not ocicrypt's layer options: %v %+v", err, opts)
	}

	// Decrypt as the guest would, through the keyprovider protocol.
	guestSock := shortSocketPath(t, "guest.sock")
	startGuestUnwrapper(t, guestSock, kek)
	ocicrypt.RegisterKeyWrapper("provider."+ProviderName,
		ocikeyprovider.NewKeyWrapper(ProviderName, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + guestSock}))
	desc.Annotations = annotations
	dcc, err := config.DecryptWithKeyProvider([][]byte{[]byte(ProviderName)})
	if err != nil {
		t.Fatal(err)
	}
	plainReader, _, err := ocicrypt.DecryptLayer(dcc.DecryptConfig, bytes.NewReader(encrypted), desc, false)
	if err != nil {
		t.Fatalf("DecryptLayer: %v", err)
	}
	plain, err := io.ReadAll(plainReader)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain, layer) {
		t.Errorf("decrypted %q, want %q", plain, layer)
	}
}

func protocolInput(t *testing.T, op ocikeyprovider.KeyProviderKeyWrapProtocolOperation, params ...string) *keyproviderpb.KeyProviderKeyWrapProtocolInput {
	t.Helper()
	in := ocikeyprovider.KeyProviderKeyWrapProtocolInput{Operation: op}
	in.KeyWrapParams.OptsData = []byte(`{"cipher":"x"}`)
	if params != nil {
		ec := &config.EncryptConfig{Parameters: map[string][][]byte{}}
		for _, p := range params {
			ec.Parameters[ProviderName] = append(ec.Parameters[ProviderName], []byte(p))
		}
		in.KeyWrapParams.Ec = ec
	}
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: raw}
}

func TestWrapKeyRejects(t *testing.T) {
	good := writeKEK(t, bytes.Repeat([]byte{1}, 32))
	short := writeKEK(t, []byte("0123456789abcdef"))
	long := writeKEK(t, bytes.Repeat([]byte{1}, 64))
	kid := ";kid=kbs:///a/b/c"
	tests := []struct {
		name     string
		in       *keyproviderpb.KeyProviderKeyWrapProtocolInput
		wantCode codes.Code
		wantMsg  string
	}{
		{"not JSON", &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte("{")},
			codes.InvalidArgument, "decode key provider input"},
		{"too large", &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: make([]byte, MaxRequestSize+1)},
			codes.InvalidArgument, "more than the"},
		{"unwrap operation", protocolInput(t, ocikeyprovider.OpKeyUnwrap, "keypath="+good+kid),
			codes.InvalidArgument, `WrapKey wants "keywrap"`},
		{"no encryption config", protocolInput(t, ocikeyprovider.OpKeyWrap),
			codes.InvalidArgument, "no encryption config"},
		{"no params for provider", protocolInput(t, ocikeyprovider.OpKeyWrap, []string{}...),
			codes.InvalidArgument, "got 0 parameter sets"},
		{"two params", protocolInput(t, ocikeyprovider.OpKeyWrap, "keypath="+good+kid, "keypath="+good+kid),
			codes.InvalidArgument, "got 2 parameter sets"},
		{"bad params", protocolInput(t, ocikeyprovider.OpKeyWrap, "keypath="+good),
			codes.InvalidArgument, "missing kid"},
		{"missing KEK file", protocolInput(t, ocikeyprovider.OpKeyWrap, "keypath=/nonexistent/kek"+kid),
			codes.FailedPrecondition, "no such file"},
		{"short KEK file", protocolInput(t, ocikeyprovider.OpKeyWrap, "keypath="+short+kid),
			codes.FailedPrecondition, "want exactly 32 raw bytes"},
		{"long KEK file", protocolInput(t, ocikeyprovider.OpKeyWrap, "keypath="+long+kid),
			codes.FailedPrecondition, "got more"},
		{"bad kid", protocolInput(t, ocikeyprovider.OpKeyWrap, "keypath="+good+";kid=kbs:///a/b"),
			codes.InvalidArgument, "three segments"},
	}
	svc := NewService(nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.WrapKey(context.Background(), tc.in)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != tc.wantCode || !strings.Contains(st.Message(), tc.wantMsg) {
				t.Fatalf("err = %v, want code %v containing %q", err, tc.wantCode, tc.wantMsg)
			}
		})
	}
}

func TestUnWrapKeyRefusedOnHost(t *testing.T) {
	sock := shortSocketPath(t, "kp.sock")
	startServe(t, sock)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = keyproviderpb.NewKeyProviderServiceClient(conn).UnWrapKey(context.Background(),
		protocolInput(t, ocikeyprovider.OpKeyUnwrap))
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "guest") {
		t.Fatalf("err = %v, want Unimplemented naming the guest", err)
	}
}

func TestServeRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "regular")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Serve(context.Background(), path, nil)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("err = %v, want refusal", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "keep me" {
		t.Error("Serve clobbered a regular file")
	}
}

func TestServeReplacesStaleSocket(t *testing.T) {
	sock := shortSocketPath(t, "kp.sock")
	// A listener closed without unlinking leaves a stale socket file, as a
	// crashed run would.
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()
	startServe(t, sock)
}

// FuzzWrapKey feeds arbitrary protocol input, as any local process that can
// reach the socket could send, to WrapKey: it must answer with an error or a
// well-formed annotation, never panic.
func FuzzWrapKey(f *testing.F) {
	kekPath := filepath.Join(f.TempDir(), "kek")
	if err := os.WriteFile(kekPath, bytes.Repeat([]byte{3}, 32), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["` +
		base64.StdEncoding.EncodeToString([]byte("keypath="+kekPath+";kid=kbs:///a/b/c")) + `"]}},"optsdata":"e30="}}`))
	f.Add([]byte(`{"op":"keyunwrap"}`))
	f.Add([]byte(`{"op":"keywrap","keywrapparams":{"ec":null}}`))
	f.Add([]byte(`[]`))
	svc := NewService(nil)
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := svc.WrapKey(context.Background(), &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: in})
		if err != nil {
			return
		}
		var res ocikeyprovider.KeyProviderKeyWrapProtocolOutput
		if err := json.Unmarshal(out.GetKeyProviderKeyWrapProtocolOutput(), &res); err != nil {
			t.Fatalf("output is not JSON: %v", err)
		}
		var a wireAnnotation
		if err := json.Unmarshal(res.KeyWrapResults.Annotation, &a); err != nil || a.WrapType != annotation.WrapTypeA256GCM {
			t.Fatalf("bad annotation %q: %v", res.KeyWrapResults.Annotation, err)
		}
	})
}

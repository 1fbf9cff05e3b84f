package pull

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	ocikp "github.com/containers/ocicrypt/keywrap/keyprovider"
	ocigrpc "github.com/containers/ocicrypt/utils/keyprovider"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/keyprovider"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
)

const testKid = "kbs:///default/image-key/1"

// testKBS answers the keyprovider's resource requests with a fixed KEK or a
// fixed refusal.
type testKBS struct {
	kek    []byte
	refuse error
}

func (k *testKBS) GetResource(_ context.Context, p kbstypes.ResourcePath) ([]byte, error) {
	if k.refuse != nil {
		return nil, k.refuse
	}
	return k.kek, nil
}

// testProvider is a keyprovider with a fixed KEK: WrapKey seals ocicrypt's
// layer options the way CoCo's tooling does, UnWrapKey is the guest's real
// service (attestation-agent/keyprovider) in front of a test KBS.
type testProvider struct {
	*keyprovider.Service
	kek []byte
}

func (p *testProvider) WrapKey(_ context.Context, in *ocigrpc.KeyProviderKeyWrapProtocolInput) (*ocigrpc.KeyProviderKeyWrapProtocolOutput, error) {
	var req ocikp.KeyProviderKeyWrapProtocolInput
	if err := json.Unmarshal(in.GetKeyProviderKeyWrapProtocolInput(), &req); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(p.kek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, gcm.NonceSize())
	rand.Read(iv)
	ann, err := json.Marshal(keyprovider.Annotation{Kid: testKid, WrappedData: gcm.Seal(nil, iv, req.KeyWrapParams.OptsData, nil), IV: iv, WrapType: keyprovider.WrapTypeA256GCM})
	if err != nil {
		return nil, err
	}
	out, err := json.Marshal(ocikp.KeyProviderKeyWrapProtocolOutput{KeyWrapResults: ocikp.KeyWrapResults{Annotation: ann}})
	if err != nil {
		return nil, err
	}
	return &ocigrpc.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: out}, nil
}

// serveProvider starts a keyprovider on a unix socket and returns its path.
func serveProvider(t testing.TB, kek []byte, kbs keyprovider.ResourceGetter) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	ocigrpc.RegisterKeyProviderServiceServer(g, &testProvider{Service: keyprovider.New(kbs), kek: kek})
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return sock
}

// ocicrypt's key wrappers are process-global: the encrypting side of the
// tests points the provider at the socket of the test that runs (tests here
// are not parallel; -count=N runs them again with new sockets).
var registered struct {
	sync.Mutex
	sock string
}

// encryptedLayer encrypts a gzip layer of entries with ocicrypt through the
// keyprovider on sock, as skopeo --encryption-key provider:attestation-agent
// would.
func encryptedLayer(t testing.TB, sock string, entries ...entry) mutate.Addendum {
	t.Helper()
	registered.Lock()
	if registered.sock != sock {
		ocicrypt.RegisterKeyWrapper("provider."+providerName, ocikp.NewKeyWrapper(providerName, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + sock}))
		registered.sock = sock
	}
	registered.Unlock()
	tarball := tarOf(t, entries...)
	blob := gzipOf(t, tarball)
	cc, err := config.EncryptWithKeyProvider([][]byte{[]byte(providerName + ":" + testKid)})
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	r, fin, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(blob), desc)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	ann, err := fin()
	if err != nil {
		t.Fatal(err)
	}
	mt := types.MediaType(ocispec.MediaTypeImageLayerGzip + encSuffix)
	return mutate.Addendum{Layer: &blobLayer{blob: enc, diffID: sha(tarball), mt: mt}, MediaType: mt, Annotations: ann}
}

func TestPullEncrypted(t *testing.T) {
	kek := make([]byte, 32)
	rand.Read(kek)
	// One provider both encrypts and (in the success case) unwraps; the
	// registration above is global, so every case shares its socket path
	// for encryption.
	kbs := &testKBS{kek: kek}
	sock := serveProvider(t, kek, kbs)
	host := startRegistry(t, nil)
	push(t, host+"/secret:1", busybox(t), encryptedLayer(t, sock, file("secret", "plaintext", 0o600)))

	otherKEK := make([]byte, 32)
	rand.Read(otherKEK)
	refusal := &rcar.KBSError{Op: "resource default/image-key/1", Status: 403, Check: "resource-policy", Detail: "evidence comes from the unsigned sample TEE"}
	tests := []struct {
		name       string
		socket     string
		wantReason string
		wantMsg    string
	}{
		{"decrypted", sock, "", ""},
		{"no attestation agent", "", agentapi.ReasonKeyUnavailable, "has encrypted layers but the sandbox has no attestation agent (no initdata)"},
		{"KBS refuses", serveProvider(t, kek, &testKBS{refuse: refusal}), agentapi.ReasonKeyUnavailable,
			"fetch layer key kbs:///default/image-key/1: kbs denied resource default/image-key/1 (403 resource-policy): evidence comes from the unsigned sample TEE"},
		{"wrong KEK", serveProvider(t, kek, &testKBS{kek: otherKEK}), agentapi.ReasonDecrypt, "does not open with the KBS key"},
		{"agent gone", filepath.Join(t.TempDir(), "none.sock"), agentapi.ReasonKeyUnavailable, "not reachable"},
		// cloak-aa's real KBS client, retrying once, in front of a KBS
		// that is stopped or frozen: its error reaches the pull verbatim.
		{"KBS stopped", serveProvider(t, kek, downKBS(t, "https://"+closedAddr(t))), agentapi.ReasonKBSUnreachable,
			"did not answer: 2 attempts over"},
		{"KBS frozen", serveProvider(t, kek, downKBS(t, "https://"+frozenKBS(t))), agentapi.ReasonKBSUnreachable,
			"last error: attestation request (auth): timed out after 100ms waiting for the KBS's response; check that the KBS is running and reachable from the guest at the URL in the pod's initdata"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Pull(context.Background(), host+"/secret:1", Options{Registry: insecure(host), StoreDir: t.TempDir(), KeyProviderSocket: tc.socket})
			if tc.wantReason == "" {
				if err != nil {
					t.Fatal(err)
				}
				body, err := os.ReadFile(filepath.Join(img.Rootfs, "secret"))
				if err != nil || string(body) != "plaintext" {
					t.Fatalf("secret = %q, %v", body, err)
				}
				if !img.Response.Encrypted || img.Response.DecryptNs <= 0 {
					t.Errorf("response = %+v, want encrypted with decrypt time", img.Response)
				}
				return
			}
			t.Logf("error: %v", err)
			var pe *Error
			if !errors.As(err, &pe) || pe.Reason != tc.wantReason || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error = %v, want %s containing %q", err, tc.wantReason, tc.wantMsg)
			}
		})
	}
}

// downKBS is cloak-aa's KBS client for a KBS at url that is down, with
// small retry settings.
func downKBS(t testing.TB, url string) *rcar.Client {
	t.Helper()
	c, err := rcar.New(rcar.Config{
		URL: url, Provider: sample.New(""),
		Retries: 1, Backoff: time.Millisecond, RequestTimeout: 100 * time.Millisecond, Budget: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// closedAddr is a loopback address that refuses connections.
func closedAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// frozenKBS listens on loopback and never accepts, like a KBS stopped with
// SIGSTOP: the kernel completes TCP handshakes, nobody answers.
func frozenKBS(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

package keyprovider

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	ocikp "github.com/containers/ocicrypt/keywrap/keyprovider"
	ocigrpc "github.com/containers/ocicrypt/utils/keyprovider"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
)

// fakeKBS serves resources by path, or a fixed error.
type fakeKBS struct {
	resources map[string][]byte
	err       error
	asked     []string
}

func (f *fakeKBS) GetResource(_ context.Context, p kbstypes.ResourcePath) ([]byte, error) {
	f.asked = append(f.asked, p.String())
	if f.err != nil {
		return nil, f.err
	}
	v, ok := f.resources[p.String()]
	if !ok {
		return nil, &rcar.KBSError{Op: "resource " + p.String(), Status: 404, Check: "resource", Detail: "no such resource"}
	}
	return v, nil
}

// serve starts the service on a unix socket and returns its address.
func serve(t *testing.T, kbs ResourceGetter) string {
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
	New(kbs).Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return "unix://" + sock
}

func dial(t *testing.T, addr string) ocigrpc.KeyProviderServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return ocigrpc.NewKeyProviderServiceClient(cc)
}

// wrap seals opts with kek the way CoCo's encryption tooling does.
func wrap(t testing.TB, kek, opts []byte, kid string) []byte {
	t.Helper()
	block, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	iv := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(iv); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(Annotation{Kid: kid, WrappedData: gcm.Seal(nil, iv, opts, nil), IV: iv, WrapType: WrapTypeA256GCM})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newKEK(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

var layerOpts = []byte(`{"cipher":"AES_256_CTR_HMAC_SHA256","cipheroptions":{"symkey":"c2VjcmV0","cipheriv":"aXY="}}`)

// TestOcicryptClient drives the service with ocicrypt's own keyprovider
// client, as image pulls in the guest will.
func TestOcicryptClient(t *testing.T) {
	kek := newKEK(t)
	kbs := &fakeKBS{resources: map[string][]byte{"default/image-key/1": kek}}
	addr := serve(t, kbs)
	kw := ocikp.NewKeyWrapper(ProviderName, keyproviderconfig.KeyProviderAttrs{Grpc: addr})
	got, err := kw.UnwrapKey(&config.DecryptConfig{}, wrap(t, kek, layerOpts, "kbs:///default/image-key/1"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(layerOpts) {
		t.Errorf("opts = %s, want %s", got, layerOpts)
	}
	if len(kbs.asked) != 1 || kbs.asked[0] != "default/image-key/1" {
		t.Errorf("KBS asked for %q, want [default/image-key/1]", kbs.asked)
	}
}

func unwrapInput(t *testing.T, op ocikp.KeyProviderKeyWrapProtocolOperation, annotation []byte) *ocigrpc.KeyProviderKeyWrapProtocolInput {
	t.Helper()
	b, err := json.Marshal(ocikp.KeyProviderKeyWrapProtocolInput{
		Operation:       op,
		KeyUnwrapParams: ocikp.KeyUnwrapParams{Annotation: annotation},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &ocigrpc.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: b}
}

func TestUnWrapKey(t *testing.T) {
	kek := newKEK(t)
	good := wrap(t, kek, layerOpts, "kbs:///default/image-key/1")
	tests := []struct {
		name     string
		kbs      *fakeKBS
		op       ocikp.KeyProviderKeyWrapProtocolOperation
		ann      []byte
		raw      []byte // whole request, overrides op/ann
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "base64 annotation", ann: []byte(base64.StdEncoding.EncodeToString(good)), wantCode: codes.OK},
		{name: "policy denies", kbs: &fakeKBS{err: &rcar.KBSError{Op: "resource default/image-key/1", Status: 403, Check: "resource-policy", Detail: "evidence comes from the unsigned sample TEE"}},
			ann: good, wantCode: codes.PermissionDenied, wantMsg: "kbs denied resource default/image-key/1 (403 resource-policy): evidence comes from the unsigned sample TEE"},
		{name: "unknown key", kbs: &fakeKBS{}, ann: good, wantCode: codes.NotFound, wantMsg: "no such resource"},
		{name: "KEK wrong size", kbs: &fakeKBS{resources: map[string][]byte{"default/image-key/1": kek[:16]}},
			ann: good, wantCode: codes.FailedPrecondition, wantMsg: "16 bytes, want a 32-byte AES-256 key"},
		{name: "other KEK", kbs: &fakeKBS{resources: map[string][]byte{"default/image-key/1": newKEK(t)}},
			ann: good, wantCode: codes.FailedPrecondition, wantMsg: "does not open"},
		{name: "wrong op", op: ocikp.OpKeyWrap, ann: good, wantCode: codes.InvalidArgument, wantMsg: `wants "keyunwrap"`},
		{name: "bad annotation", ann: []byte(`{"kid":"kbs:///a/b/c","wrapped_data":"AA==","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A128GCM"}`),
			wantCode: codes.InvalidArgument, wantMsg: `wrap_type "A128GCM" not supported`},
		{name: "not JSON", raw: []byte("nope"), wantCode: codes.InvalidArgument, wantMsg: "not ocicrypt's protocol JSON"},
		{name: "oversized", raw: make([]byte, maxInput+1), wantCode: codes.InvalidArgument, wantMsg: "limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kbs := tc.kbs
			if kbs == nil {
				kbs = &fakeKBS{resources: map[string][]byte{"default/image-key/1": kek}}
			}
			op := tc.op
			if op == "" {
				op = ocikp.OpKeyUnwrap
			}
			in := unwrapInput(t, op, tc.ann)
			if tc.raw != nil {
				in = &ocigrpc.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: tc.raw}
			}
			out, err := dial(t, serve(t, kbs)).UnWrapKey(context.Background(), in)
			st := status.Convert(err)
			if st.Code() != tc.wantCode || !strings.Contains(st.Message(), tc.wantMsg) {
				t.Fatalf("status = %v %q, want %v containing %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
			if tc.wantCode != codes.OK {
				return
			}
			var res ocikp.KeyProviderKeyWrapProtocolOutput
			if err := json.Unmarshal(out.GetKeyProviderKeyWrapProtocolOutput(), &res); err != nil {
				t.Fatal(err)
			}
			if string(res.KeyUnwrapResults.OptsData) != string(layerOpts) {
				t.Errorf("opts = %s, want %s", res.KeyUnwrapResults.OptsData, layerOpts)
			}
		})
	}
}

func TestWrapKeyUnimplemented(t *testing.T) {
	_, err := dial(t, serve(t, &fakeKBS{})).WrapKey(context.Background(), &ocigrpc.KeyProviderKeyWrapProtocolInput{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("WrapKey error = %v, want Unimplemented", err)
	}
}

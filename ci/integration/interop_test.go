package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	ocicfg "github.com/containers/ocicrypt/config"
	kpcfg "github.com/containers/ocicrypt/config/keyprovider-config"
	ocikp "github.com/containers/ocicrypt/keywrap/keyprovider"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/service"
	"github.com/cloak-containers/cloak/kbs/keywrap"
)

// newKEK writes a random 32-byte key-encryption key to dir/kek (0600).
func newKEK(t testing.TB, dir string) (kek []byte, path string) {
	kek = make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "kek")
	if err := os.WriteFile(path, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return kek, path
}

// useProvider points ocicrypt's "attestation-agent" key provider at a gRPC
// socket, as an ocicrypt keyprovider config file would (skopeo on the host
// points it at the wrapping service, the guest at cloak-aa).
func useProvider(sock string) {
	ocicrypt.RegisterKeyWrapper("provider.attestation-agent",
		ocikp.NewKeyWrapper("attestation-agent", kpcfg.KeyProviderAttrs{Grpc: "unix://" + sock}))
}

func serveUntilDone(t *testing.T, run func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("server stopped with: %v", err)
		}
	})
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for range 500 {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("socket %s did not appear", path)
}

// TestEncryptedLayerThroughKBS encrypts a layer with ocicrypt through the
// host-side wrapping provider under a kbs:/// key id, then decrypts it with
// ocicrypt through cloak-aa's keyprovider, which must attest to the real KBS
// and get the KEK released before it can unwrap.
func TestEncryptedLayerThroughKBS(t *testing.T) {
	k := startKBS(t)
	ctx := ctxT(t)
	dir := t.TempDir()

	kek, kekPath := newKEK(t, dir)
	const kid = "kbs:///default/image-key/layer"
	if _, err := k.admin.SetResource(ctx, "default/image-key/layer", kek); err != nil {
		t.Fatal(err)
	}
	if err := k.admin.SetReferenceValue(ctx, "sample_svn", []string{"1"}); err != nil {
		t.Fatal(err)
	}

	// Host side: wrap.
	wrapSock := filepath.Join(dir, "wrap.sock")
	serveUntilDone(t, func(ctx context.Context) error { return keywrap.Serve(ctx, wrapSock, nil) })
	waitSocket(t, wrapSock)
	useProvider(wrapSock)

	layer := bytes.Repeat([]byte("confidential layer contents\n"), 4096)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(layer), Size: int64(len(layer))}
	cc, err := ocicfg.EncryptWithKeyProvider([][]byte{[]byte("attestation-agent:keypath=" + kekPath + ";kid=" + kid)})
	if err != nil {
		t.Fatal(err)
	}
	encReader, finalize, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(layer), desc)
	if err != nil {
		t.Fatalf("encrypt layer: %v", err)
	}
	encrypted, err := io.ReadAll(encReader)
	if err != nil {
		t.Fatal(err)
	}
	annotations, err := finalize()
	if err != nil {
		t.Fatalf("finalize encryption: %v", err)
	}
	if bytes.Contains(encrypted, []byte("confidential layer")) {
		t.Fatal("encrypted layer contains plaintext")
	}
	ann := annotations["org.opencontainers.image.enc.keys.provider.attestation-agent"]
	if ann == "" {
		t.Fatalf("no attestation-agent key annotation in %v", annotations)
	}
	encDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip + "+encrypted", Digest: digest.FromBytes(encrypted), Size: int64(len(encrypted)), Annotations: annotations}

	// Guest side: cloak-aa's keyprovider in front of a real KBS client.
	aaSock := filepath.Join(dir, "aa", "aa.sock")
	aa, err := service.Listen(service.Config{Socket: aaSock, KBS: k.guest(t), Provider: sample.New("1")})
	if err != nil {
		t.Fatal(err)
	}
	serveUntilDone(t, aa.Serve)
	useProvider(aaSock)

	decrypt := func() ([]byte, error) {
		dc, err := ocicfg.DecryptWithKeyProvider([][]byte{[]byte("attestation-agent")})
		if err != nil {
			return nil, err
		}
		r, _, err := ocicrypt.DecryptLayer(dc.DecryptConfig, bytes.NewReader(encrypted), encDesc, false)
		if err != nil {
			return nil, err
		}
		return io.ReadAll(r)
	}

	// The default resource policy refuses the sample TEE: no key, no layer.
	if _, err := decrypt(); err == nil || !strings.Contains(err.Error(), "sample") {
		t.Fatalf("decrypt under the default policy: err = %v, want a refusal naming the sample TEE", err)
	}

	if err := k.admin.SetResourcePolicy(ctx, []byte(devPolicy)); err != nil {
		t.Fatal(err)
	}
	plain, err := decrypt()
	if err != nil {
		t.Fatalf("decrypt after attestation: %v", err)
	}
	if !bytes.Equal(plain, layer) {
		t.Fatal("decrypted layer differs from the original")
	}

	// The KBS recorded both decisions for this key.
	page, err := k.admin.Audit(ctx, 0, 100, "")
	if err != nil {
		t.Fatal(err)
	}
	var verdicts []string
	for _, e := range page.Entries {
		if e.Resource == "default/image-key/layer" {
			verdicts = append(verdicts, e.Verdict)
		}
	}
	if strings.Join(verdicts, ",") != "deny,allow" {
		t.Errorf("release verdicts for the layer key = %v, want [deny allow]", verdicts)
	}
}

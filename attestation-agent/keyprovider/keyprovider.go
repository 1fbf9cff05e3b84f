// Package keyprovider is the guest's ocicrypt keyprovider gRPC service
// (provider name "attestation-agent"). ocicrypt calls UnWrapKey with a
// layer's annotation; the service fetches the key-encryption key named
// there from the KBS (which attests the guest first) and unseals the
// layer's decryption options with it.
package keyprovider

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"

	ocikp "github.com/containers/ocicrypt/keywrap/keyprovider"
	ocigrpc "github.com/containers/ocicrypt/utils/keyprovider"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
)

// ProviderName is the keyprovider name in ocicrypt configuration and in the
// layer annotation key.
const ProviderName = "attestation-agent"

// kekSize is the AES-256 key size a KEK resource must have.
const kekSize = 32

// maxInput bounds the UnWrapKey request document (annotation base64 + JSON).
const maxInput = 2 * MaxAnnotation

// ResourceGetter fetches KBS resources; *rcar.Client implements it. Errors
// that carry a gRPC status (rcar.KBSError does) reach the caller with it.
type ResourceGetter interface {
	GetResource(ctx context.Context, p kbstypes.ResourcePath) ([]byte, error)
}

// Service implements ocicrypt's KeyProviderService.
type Service struct {
	ocigrpc.UnimplementedKeyProviderServiceServer
	kbs ResourceGetter
}

// New returns a Service that fetches keys through kbs.
func New(kbs ResourceGetter) *Service { return &Service{kbs: kbs} }

// Register adds the service to s.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	ocigrpc.RegisterKeyProviderServiceServer(g, s)
}

// WrapKey is not offered: the guest only decrypts; images are encrypted
// elsewhere (e.g. skopeo with a host-side keyprovider).
func (s *Service) WrapKey(context.Context, *ocigrpc.KeyProviderKeyWrapProtocolInput) (*ocigrpc.KeyProviderKeyWrapProtocolOutput, error) {
	return nil, status.Error(codes.Unimplemented, "the attestation agent does not wrap keys; encrypt images outside the guest")
}

// UnWrapKey returns the layer's PrivateLayerBlockCipherOptions JSON.
func (s *Service) UnWrapKey(ctx context.Context, in *ocigrpc.KeyProviderKeyWrapProtocolInput) (*ocigrpc.KeyProviderKeyWrapProtocolOutput, error) {
	raw := in.GetKeyProviderKeyWrapProtocolInput()
	if len(raw) > maxInput {
		return nil, status.Errorf(codes.InvalidArgument, "keyprovider input is %d bytes, limit is %d", len(raw), maxInput)
	}
	var req ocikp.KeyProviderKeyWrapProtocolInput
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "keyprovider input is not ocicrypt's protocol JSON: %v", err)
	}
	if req.Operation != ocikp.OpKeyUnwrap {
		return nil, status.Errorf(codes.InvalidArgument, "keyprovider op %q: UnWrapKey wants %q", req.Operation, ocikp.OpKeyUnwrap)
	}
	ann, path, err := ParseAnnotation(req.KeyUnwrapParams.Annotation)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	kek, err := s.kbs.GetResource(ctx, path)
	if err != nil {
		return nil, rcar.StatusError(fmt.Errorf("fetch layer key %s: %w", ann.Kid, err))
	}
	opts, err := unseal(kek, ann)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "layer key %s: %v", ann.Kid, err)
	}
	out, err := json.Marshal(ocikp.KeyProviderKeyWrapProtocolOutput{
		KeyUnwrapResults: ocikp.KeyUnwrapResults{OptsData: opts},
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode keyprovider output: %v", err)
	}
	return &ocigrpc.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: out}, nil
}

func unseal(kek []byte, ann Annotation) ([]byte, error) {
	if len(kek) != kekSize {
		return nil, fmt.Errorf("KBS resource is %d bytes, want a %d-byte AES-256 key", len(kek), kekSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("AES key: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("AES-GCM: %w", err)
	}
	opts, err := gcm.Open(nil, ann.IV, ann.WrappedData, nil)
	if err != nil {
		return nil, errors.New("wrapped_data does not open with the KBS key: the layer was encrypted with a different key or the annotation was altered")
	}
	return opts, nil
}

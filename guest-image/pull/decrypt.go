package pull

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
)

const (
	// providerName is the keyprovider cloak-aa serves (and the suffix of
	// the layer annotation that carries the wrapped key).
	providerName       = "attestation-agent"
	encAnnotations     = "org.opencontainers.image.enc.keys."
	providerAnnotation = encAnnotations + "provider." + providerName
	pubOptsAnnotation  = "org.opencontainers.image.enc.pubopts"
	// maxWrappedKeys bounds the comma-separated keys one layer may carry.
	maxWrappedKeys = 16
	maxAnnotation  = 256 << 10
)

// decryptLayer unwraps the layer's key through the attestation agent and
// returns the decrypted (still compressed) layer stream, plus a check to
// run once the stream has been read to EOF.
//
// This calls ocicrypt's keyprovider client and block cipher directly
// rather than ocicrypt.DecryptLayer: DecryptLayer looks the keyprovider up
// in a process-wide registry (RegisterKeyWrapper) and folds every
// unwrapper's error into one string, which would lose the gRPC status that
// carries the KBS's reason for a refused key.
func decryptLayer(ctx context.Context, desc ocispec.Descriptor, enc io.Reader, keySocket, image string) (io.Reader, func() error, error) {
	if keySocket == "" {
		return nil, nil, &Error{Reason: agentapi.ReasonKeyUnavailable,
			Err: fmt.Errorf("image %s has encrypted layers but the sandbox has no attestation agent (no initdata)", image)}
	}
	keys, err := wrappedKeys(desc.Annotations)
	if err != nil {
		return nil, nil, &Error{Reason: agentapi.ReasonDecrypt, Err: err}
	}
	pubOpts, err := publicOptions(desc.Annotations)
	if err != nil {
		return nil, nil, &Error{Reason: agentapi.ReasonDecrypt, Err: err}
	}

	kw := keyprovider.NewKeyWrapper(providerName, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + keySocket})
	var privOpts []byte
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		// ocicrypt's client takes no context; cloak-aa bounds its own KBS
		// calls.
		privOpts, err = kw.UnwrapKey(&config.DecryptConfig{}, k)
		// Every key goes to the same KBS: one that did not answer will
		// not answer for the next key either.
		if err == nil || kbsUnreachable(err) {
			break
		}
	}
	if err != nil {
		return nil, nil, unwrapError(err)
	}
	var priv blockcipher.PrivateLayerBlockCipherOptions
	if err := json.Unmarshal(privOpts, &priv); err != nil {
		return nil, nil, &Error{Reason: agentapi.ReasonDecrypt, Err: fmt.Errorf("unwrapped layer key is not ocicrypt's options JSON: %w", err)}
	}
	lbch, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		return nil, nil, &Error{Reason: agentapi.ReasonDecrypt, Err: err}
	}
	plain, _, err := lbch.Decrypt(enc, blockcipher.LayerBlockCipherOptions{Private: priv, Public: pubOpts})
	if err != nil {
		return nil, nil, &Error{Reason: agentapi.ReasonDecrypt, Err: fmt.Errorf("decrypt: %w", err)}
	}
	// The sealed options name the digest of the plaintext blob; checking
	// it ties the key to this very layer (the diff_id check follows).
	var verifier digest.Verifier
	if priv.Digest != "" {
		if err := priv.Digest.Validate(); err != nil {
			return nil, nil, &Error{Reason: agentapi.ReasonDecrypt, Err: fmt.Errorf("unwrapped layer key names digest %q: %w", priv.Digest, err)}
		}
		verifier = priv.Digest.Verifier()
		plain = io.TeeReader(plain, verifier)
	}
	check := func() error {
		if verifier != nil && !verifier.Verified() {
			return &Error{Reason: agentapi.ReasonDecrypt, Err: fmt.Errorf("decrypted layer does not match digest %s sealed with its key", priv.Digest)}
		}
		return nil
	}
	return &decryptErrors{r: plain}, check, nil
}

// decryptErrors marks read errors of the decrypted stream (a failed HMAC
// at EOF, a truncated ciphertext) as decryption failures.
type decryptErrors struct{ r io.Reader }

func (d *decryptErrors) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		return n, &Error{Reason: agentapi.ReasonDecrypt, Err: fmt.Errorf("decrypt: %w", err)}
	}
	return n, err
}

func wrappedKeys(ann map[string]string) ([][]byte, error) {
	v, ok := ann[providerAnnotation]
	if !ok {
		var other []string
		for k := range ann {
			if strings.HasPrefix(k, encAnnotations) {
				other = append(other, strings.TrimPrefix(k, encAnnotations))
			}
		}
		if len(other) == 0 {
			return nil, errors.New("layer is marked encrypted but carries no wrapped key")
		}
		return nil, fmt.Errorf("layer key is wrapped for %s, not for provider %s", strings.Join(other, ", "), providerName)
	}
	if len(v) > maxAnnotation {
		return nil, fmt.Errorf("key annotation is %d bytes, limit is %d", len(v), maxAnnotation)
	}
	parts := strings.Split(v, ",")
	if len(parts) > maxWrappedKeys {
		return nil, fmt.Errorf("layer carries %d wrapped keys, limit is %d", len(parts), maxWrappedKeys)
	}
	keys := make([][]byte, 0, len(parts))
	for _, p := range parts {
		b, err := base64.StdEncoding.DecodeString(p)
		if err != nil {
			return nil, fmt.Errorf("key annotation is not base64: %w", err)
		}
		keys = append(keys, b)
	}
	return keys, nil
}

func publicOptions(ann map[string]string) (blockcipher.PublicLayerBlockCipherOptions, error) {
	var pub blockcipher.PublicLayerBlockCipherOptions
	v, ok := ann[pubOptsAnnotation]
	if !ok {
		return pub, nil
	}
	if len(v) > maxAnnotation {
		return pub, fmt.Errorf("pubopts annotation is %d bytes, limit is %d", len(v), maxAnnotation)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return pub, fmt.Errorf("pubopts annotation is not base64: %w", err)
	}
	if err := json.Unmarshal(b, &pub); err != nil {
		return pub, fmt.Errorf("pubopts annotation: %w", err)
	}
	return pub, nil
}

// unwrapError classifies a failed key unwrap. cloak-aa answers with a gRPC
// status whose message is the KBS's refusal; it is passed on verbatim. A
// key that exists but does not open the layer's wrapped options, or an
// annotation cloak-aa cannot read, is a decryption failure; anything else
// (refused, unknown key, KBS or agent unreachable) means no key.
func unwrapError(err error) error {
	var gs interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &gs) {
		return &Error{Reason: agentapi.ReasonKeyUnavailable, Err: fmt.Errorf("attestation agent keyprovider: %w", err)}
	}
	st := gs.GRPCStatus()
	reason := agentapi.ReasonKeyUnavailable
	switch st.Code() {
	case codes.FailedPrecondition, codes.InvalidArgument:
		reason = agentapi.ReasonDecrypt
	case codes.Unavailable:
		if strings.Contains(st.Message(), "connection error") {
			return &Error{Reason: reason, Err: fmt.Errorf("attestation agent keyprovider not reachable: %s", st.Message())}
		}
		if kbsUnreachable(err) {
			reason = agentapi.ReasonKBSUnreachable
		}
	}
	return &Error{Reason: reason, Err: errors.New(st.Message())}
}

// kbsUnreachable reports whether cloak-aa marked err as a KBS that did not
// answer within its retries and time budget (rcar.UnreachableError).
func kbsUnreachable(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == rcar.ErrorDomain && info.GetReason() == rcar.ReasonUnreachable {
			return true
		}
	}
	return false
}

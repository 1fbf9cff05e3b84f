// Package unseal turns Confidential Containers sealed secrets into their
// plaintext inside the guest, before a container's process starts: the host
// and containerd only ever hold the sealed string (api/kbstypes/sealed), the
// process sees the secret.
//
// A sealed value is unsealed as confidential-data-hub does for a vault
// secret of provider "kbs": its header's kid names a KBS resource holding
// the P-256 public key (JWK) that signed it; the signature must verify with
// that key; the payload names the KBS resource holding the secret. Both
// resources come from the KBS through the sandbox's attestation agent, so
// the same attestation, TEE key and resource policy apply as to image keys.
// Unlike confidential-data-hub there is no switch to skip verification: an
// unsigned sealed value is refused, since anyone who can write a pod spec
// could otherwise point a container at any resource the guest may fetch.
// Envelope secrets (a data key wrapped by a KMS) are refused too: no KMS
// provider exists in the guest.
package unseal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cloak-containers/cloak/api/kbstypes/sealed"
)

// Resources fetches KBS resources for the guest: the attestation agent's
// GetResource.
type Resources interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// MaxPlaintext bounds a secret placed in an environment variable.
const MaxPlaintext = 64 << 10

// Is reports whether an environment value or file content is a sealed
// secret (CoCo's rule: it starts with "sealed.").
func Is(v string) bool { return strings.HasPrefix(v, sealed.Prefix) }

// Error is a sealed value that could not be unsealed. It names where the
// value was (an environment variable) and why, never the value or the
// secret.
type Error struct {
	Where string // e.g. `env "DB_PASSWORD"`
	Err   error
}

func (e *Error) Error() string { return e.Where + ": sealed secret: " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrResource wraps a failure of the attestation agent to fetch a resource
// (KBS refusal, not found, unreachable): the caller maps it to its reason.
var ErrResource = errors.New("the KBS did not release a resource")

// Value unseals one sealed value and returns the secret's bytes.
func Value(ctx context.Context, v string, r Resources) ([]byte, error) {
	s, err := sealed.Parse(v)
	if err != nil {
		return nil, err
	}
	if s.Header == nil {
		return nil, errors.New("it is unsigned (" + sealed.UnsignedHeader + "); this guest unseals only signed secrets: seal it with kbsctl secret seal --signing-key")
	}
	if s.Secret.Type != sealed.TypeVault {
		return nil, fmt.Errorf("type %q is not supported in this guest (only %q of provider %q)", s.Secret.Type, sealed.TypeVault, sealed.ProviderKBS)
	}
	path, err := s.Secret.Resource()
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(s.Header.Kid, "kbs://") {
		return nil, fmt.Errorf("kid %q is not a KBS resource URI (kbs:///repository/type/tag): this guest has no local verification keys", s.Header.Kid)
	}
	if _, err := sealed.ParseResourceURI(s.Header.Kid); err != nil {
		return nil, fmt.Errorf("kid: %w", err)
	}
	jwk, err := r.GetResource(ctx, s.Header.Kid)
	if err != nil {
		return nil, fmt.Errorf("%w: verification key %s: %w", ErrResource, s.Header.Kid, err)
	}
	pub, err := sealed.ParsePublicJWK(jwk)
	if err != nil {
		return nil, fmt.Errorf("verification key %s: %w", s.Header.Kid, err)
	}
	if err := s.Verify(pub); err != nil {
		return nil, err
	}
	secret, err := r.GetResource(ctx, path.URI())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrResource, path.URI(), err)
	}
	return secret, nil
}

// Env returns env ("NAME=value" entries) with every sealed value replaced by
// its secret, and whether any was. The secret must fit an environment
// variable: at most MaxPlaintext bytes, no NUL byte. env is not changed.
func Env(ctx context.Context, env []string, r Resources) ([]string, bool, error) {
	out := env
	changed := false
	for i, kv := range env {
		name, v, ok := strings.Cut(kv, "=")
		if !ok || !Is(v) {
			continue
		}
		where := fmt.Sprintf("env %q", name)
		if r == nil {
			return nil, false, &Error{where, errors.New("the sandbox has no attestation agent (its initdata names no KBS), so nothing can unseal it")}
		}
		secret, err := Value(ctx, v, r)
		if err != nil {
			return nil, false, &Error{where, err}
		}
		if len(secret) > MaxPlaintext {
			return nil, false, &Error{where, fmt.Errorf("the secret is %d bytes, more than the %d an environment variable may hold here: use a sealed file", len(secret), MaxPlaintext)}
		}
		if bytes.IndexByte(secret, 0) >= 0 {
			return nil, false, &Error{where, errors.New("the secret holds a NUL byte, which an environment variable cannot carry")}
		}
		if !changed {
			out = append([]string(nil), env...)
			changed = true
		}
		out[i] = name + "=" + string(secret)
	}
	return out, changed, nil
}

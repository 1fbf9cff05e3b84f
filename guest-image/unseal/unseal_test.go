package unseal

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/api/kbstypes/sealed"
)

// kbs is the KBS as the guest's attestation agent sees it: resources by
// URI; what it does not hold it refuses, as the KBS would with 404.
type kbs map[string][]byte

var errNotFound = errors.New("resource not found (KBS 404)")

func (k kbs) GetResource(_ context.Context, uri string) ([]byte, error) {
	if v, ok := k[uri]; ok {
		return v, nil
	}
	return nil, errNotFound
}

const kid = "kbs:///default/sealing/pub"

func setup(t *testing.T) (*ecdsa.PrivateKey, kbs) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := sealed.PublicJWK(&key.PublicKey, "")
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := json.Marshal(jwk)
	return key, kbs{kid: pub, "kbs:///default/app/db-password": []byte("s3cr3t=value\nline2")}
}

func seal(t *testing.T, key *ecdsa.PrivateKey, kid, resource string) string {
	t.Helper()
	p, err := kbstypes.ParseResourcePath(resource)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sealed.Seal(sealed.Vault(p), key, kid)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEnv(t *testing.T) {
	key, k := setup(t)
	v := seal(t, key, kid, "default/app/db-password")
	env := []string{"PATH=/bin", "DB_PASSWORD=" + v, "PLAIN=sealed-but-not-really", "EMPTY="}
	got, changed, err := Env(context.Background(), env, k)
	if err != nil || !changed {
		t.Fatalf("Env: changed %v, err %v", changed, err)
	}
	want := []string{"PATH=/bin", "DB_PASSWORD=s3cr3t=value\nline2", "PLAIN=sealed-but-not-really", "EMPTY="}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Env = %q, want %q", got, want)
	}
	if env[1] != "DB_PASSWORD="+v {
		t.Error("Env changed its input")
	}
	same, changed, err := Env(context.Background(), []string{"A=1"}, nil)
	if err != nil || changed || len(same) != 1 || same[0] != "A=1" {
		t.Errorf("no sealed value: %q %v %v", same, changed, err)
	}
}

func TestEnvRefuses(t *testing.T) {
	key, k := setup(t)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := seal(t, key, kid, "default/app/db-password")
	p, _ := kbstypes.ParseResourcePath("default/app/db-password")
	unsigned, err := sealed.SealUnsigned(sealed.Vault(p))
	if err != nil {
		t.Fatal(err)
	}
	envelope := sealed.Secret{Version: sealed.Version, Type: sealed.TypeEnvelope, Provider: "aliyun", KeyID: "k",
		EncryptedKey: "a2V5", EncryptedData: "ZGF0YQ", WrapType: "A256GCM", IV: "aXY", ProviderSettings: map[string]any{}, Annotations: map[string]any{}}
	env, err := sealed.Seal(envelope, key, kid)
	if err != nil {
		t.Fatal(err)
	}
	k["kbs:///default/app/nul"] = []byte("a\x00b")
	k["kbs:///default/app/big"] = make([]byte, MaxPlaintext+1)
	k["kbs:///default/keys/notjwk"] = []byte("not a key")
	for name, tc := range map[string]struct {
		value string
		res   Resources
		want  string
	}{
		"wrong signer":         {seal(t, other, kid, "default/app/db-password"), k, "does not verify"},
		"truncated":            {good[:len(good)-10], k, "signature"},
		"unsigned":             {unsigned, k, "unsigned"},
		"unknown resource":     {seal(t, key, kid, "default/app/missing"), k, "not found"},
		"unknown kid":          {seal(t, key, "kbs:///default/sealing/none", "default/app/db-password"), k, "verification key kbs:///default/sealing/none"},
		"kid not a KBS URI":    {seal(t, key, "local-key", "default/app/db-password"), k, "not a KBS resource URI"},
		"kid holds no JWK":     {seal(t, key, "kbs:///default/keys/notjwk", "default/app/db-password"), k, "verification key"},
		"envelope":             {env, k, `type "envelope" is not supported`},
		"NUL in secret":        {seal(t, key, kid, "default/app/nul"), k, "NUL"},
		"too big":              {seal(t, key, kid, "default/app/big"), k, "more than"},
		"garbage":              {"sealed.x.y", k, "parts"},
		"no attestation agent": {good, nil, "no attestation agent"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Env(context.Background(), []string{"OK=1", "DB_PASSWORD=" + tc.value}, tc.res)
			var ue *Error
			if !errors.As(err, &ue) || ue.Where != `env "DB_PASSWORD"` || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want an unseal error for env DB_PASSWORD containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("the error leaks the secret: %v", err)
			}
		})
	}
	// A KBS refusal is told apart from a bad sealed value.
	_, _, err = Env(context.Background(), []string{"X=" + seal(t, key, kid, "default/app/missing")}, k)
	if !errors.Is(err, ErrResource) || !errors.Is(err, errNotFound) {
		t.Errorf("missing resource: %v, want ErrResource wrapping the KBS's answer", err)
	}
}

// FuzzEnv: whatever the host puts in an environment value, Env returns an
// Error or a result, never panics, and never calls the KBS for a value that
// is not a well-formed signed vault secret with a KBS kid.
func FuzzEnv(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p, _ := kbstypes.ParseResourcePath("default/app/db-password")
	good, _ := sealed.Seal(sealed.Vault(p), key, kid)
	f.Add(good)
	f.Add("sealed.fakejwsheader.e30.fakesignature")
	f.Add("plain")
	f.Fuzz(func(t *testing.T, v string) {
		calls := 0
		r := countingKBS{calls: &calls}
		out, changed, err := Env(context.Background(), []string{"V=" + v}, r)
		if err == nil && changed && len(out) != 1 {
			t.Fatalf("Env returned %d entries", len(out))
		}
		if !Is(v) && (calls > 0 || changed || err != nil) {
			t.Fatalf("a value that is not sealed was touched: calls %d changed %v err %v", calls, changed, err)
		}
	})
}

type countingKBS struct{ calls *int }

func (c countingKBS) GetResource(context.Context, string) ([]byte, error) {
	*c.calls++
	return nil, errNotFound
}

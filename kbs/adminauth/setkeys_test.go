package adminauth

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type testKey struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func newTestKey(t testing.TB) testKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{pub, priv}
}

// fingerprints names keys as role:fingerprint, sorted, for comparisons.
func fingerprints(keys []Key) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Role+":"+Fingerprint(k.Public))
	}
	slices.Sort(out)
	return out
}

// TestSetKeys: after SetKeys the new keys verify with their roles, the
// removed ones are refused as unknown signers, and the returned lists say
// what changed, a key that changes role being removed from one role and
// added to the other.
func TestSetKeys(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	alice, bob, carol := newTestKey(t), newTestKey(t), newTestKey(t)
	v := NewVerifier([]Key{{alice.pub, "admin"}, {bob.pub, "admin"}}, func() time.Time { return now })
	tok := func(k testKey) string {
		return sign(t, k.priv, map[string]any{"iat": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	}
	if id, err := v.Verify(tok(alice)); err != nil || id.Role != "admin" {
		t.Fatalf("alice before: %+v, %v", id, err)
	}
	if _, err := v.Verify(tok(carol)); err == nil {
		t.Fatal("carol verified before she was added")
	}

	// Bob moves to auditor, alice leaves, carol arrives as auditor.
	next := []Key{{bob.pub, "auditor"}, {carol.pub, "auditor"}}
	added, removed := v.SetKeys(next)
	wantAdded := fingerprints([]Key{{bob.pub, "auditor"}, {carol.pub, "auditor"}})
	wantRemoved := fingerprints([]Key{{alice.pub, "admin"}, {bob.pub, "admin"}})
	if got := fingerprints(added); !slices.Equal(got, wantAdded) {
		t.Errorf("added %v, want %v", got, wantAdded)
	}
	if got := fingerprints(removed); !slices.Equal(got, wantRemoved) {
		t.Errorf("removed %v, want %v", got, wantRemoved)
	}
	next[0].Role = "admin" // the caller's slice is not the verifier's
	var e *Error
	if _, err := v.Verify(tok(alice)); !errors.As(err, &e) || e.Check != CheckSignature {
		t.Fatalf("alice after removal: %v, want %s", err, CheckSignature)
	}
	for name, k := range map[string]testKey{"bob": bob, "carol": carol} {
		if id, err := v.Verify(tok(k)); err != nil || id.Role != "auditor" || id.KeyRole != "auditor" {
			t.Fatalf("%s after: %+v, %v; want auditor", name, id, err)
		}
	}
	if v.Len() != 2 || fingerprints(v.Keys())[0] != wantAdded[0] {
		t.Fatalf("Keys %v, Len %d", fingerprints(v.Keys()), v.Len())
	}

	// The same set again changes nothing; duplicates count once.
	added, removed = v.SetKeys([]Key{{carol.pub, "auditor"}, {bob.pub, "auditor"}, {carol.pub, "auditor"}})
	if len(added) != 0 || len(removed) != 0 {
		t.Fatalf("same set: added %v removed %v", fingerprints(added), fingerprints(removed))
	}
	added, removed = v.SetKeys(nil)
	if len(added) != 0 || len(removed) != 2 || v.Len() != 0 {
		t.Fatalf("empty set: added %v removed %v len %d", fingerprints(added), fingerprints(removed), v.Len())
	}
	if _, err := v.Verify(tok(bob)); !errors.As(err, &e) || e.Check != CheckSignature {
		t.Fatalf("bob with no keys: %v", err)
	}
}

// TestSetKeysConcurrent swaps the key set while other goroutines verify
// (run with -race). Alice is in every set and must always verify as admin;
// bob is an auditor in every other set and must verify as auditor or be
// refused as an unknown signer, never anything else.
func TestSetKeysConcurrent(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	alice, bob := newTestKey(t), newTestKey(t)
	with := []Key{{alice.pub, "admin"}, {bob.pub, "auditor"}}
	without := []Key{{alice.pub, "admin"}}
	v := NewVerifier(with, func() time.Time { return now })
	claims := map[string]any{"iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	aliceTok, bobTok := sign(t, alice.priv, claims), sign(t, bob.priv, claims)

	// Verifiers run until they have done enough checks between them; a
	// swapper alternates the two sets meanwhile.
	const checks = 2000
	var done atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	var bobSeen, bobRefused [4]int
	for g := range 4 {
		wg.Go(func() {
			for done.Load() < checks {
				if id, err := v.Verify(aliceTok); err != nil || id.Role != "admin" {
					errs <- errors.New("alice: " + id.Role + " " + errString(err))
					return
				}
				id, err := v.Verify(bobTok)
				var e *Error
				switch {
				case err == nil && id.Role == "auditor":
					bobSeen[g]++
				case errors.As(err, &e) && e.Check == CheckSignature:
					bobRefused[g]++
				default:
					errs <- errors.New("bob: " + id.Role + " " + errString(err))
					return
				}
				_, _ = v.Len(), v.Keys()
				done.Add(1)
			}
		})
	}
	swaps := 0
	var swapper sync.WaitGroup
	swapper.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if swaps%2 == 0 {
				v.SetKeys(without)
			} else {
				v.SetKeys(with)
			}
			swaps++
		}
	})
	wg.Wait()
	close(stop)
	swapper.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var seen, refused int
	for g := range 4 {
		seen, refused = seen+bobSeen[g], refused+bobRefused[g]
	}
	t.Logf("%d swaps; bob verified %d times, refused %d times", swaps, seen, refused)
	if seen == 0 || refused == 0 {
		t.Fatalf("bob verified %d times and was refused %d times: the verifications did not overlap the swaps", seen, refused)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

package session

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestLifecycle(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	m := NewManager(time.Minute, 10, c.now)
	s, err := m.Create("sample")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ID) != 32 {
		t.Fatalf("id %q is not 128 bits of hex", s.ID)
	}
	if n, err := base64.StdEncoding.DecodeString(s.Nonce); err != nil || len(n) != 32 {
		t.Fatalf("nonce %q: %v (len %d)", s.Nonce, err, len(n))
	}
	if _, err := m.Attested(s.ID); !errors.Is(err, ErrNotAttested) {
		t.Fatalf("Attested before attest: %v", err)
	}
	if _, err := m.ConsumeNonce(s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ConsumeNonce(s.ID); !errors.Is(err, ErrNonceUsed) {
		t.Fatalf("second ConsumeNonce: %v, want ErrNonceUsed", err)
	}
	if err := m.MarkAttested(s.ID, "tok", []byte(`{}`), map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	got, err := m.Attested(s.ID)
	if err != nil || got.Token != "tok" || got.State != StateAttested {
		t.Fatalf("Attested = %+v, %v", got, err)
	}
	c.t = c.t.Add(time.Minute)
	if _, err := m.Attested(s.ID); !errors.Is(err, ErrExpired) {
		t.Fatalf("after TTL: %v, want ErrExpired", err)
	}
	if _, err := m.Get(s.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired session should be dropped: %v", err)
	}
	if _, err := m.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestBounded(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	m := NewManager(time.Minute, 2, c.now)
	for range 2 {
		if _, err := m.Create("sample"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Create("sample"); !errors.Is(err, ErrFull) {
		t.Fatalf("third session: %v, want ErrFull", err)
	}
	c.t = c.t.Add(2 * time.Minute)
	if _, err := m.Create("sample"); err != nil {
		t.Fatalf("expired sessions should be evicted: %v", err)
	}
	if m.Len() != 1 {
		t.Fatalf("Len = %d, want 1", m.Len())
	}
}

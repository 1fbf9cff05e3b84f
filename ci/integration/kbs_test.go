package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbs/server"
)

// devPolicy releases anything to affirming evidence, sample included. It is
// what an admin installs on a development KBS.
const devPolicy = `package policy

import rego.v1

default allow := false

allow if input.submods.cpu0["ear.status"] == "affirming"
`

// kbsEnv is a real KBS (bbolt in a temp dir, TLS on loopback) plus an admin
// client for it.
type kbsEnv struct {
	url   string
	caPEM []byte
	admin *adminclient.Client
	srv   *server.Server
	ts    *httptest.Server
}

func startKBS(t testing.TB) *kbsEnv { return startKBSWith(t, nil) }

// startKBSWith is startKBS with configure applied to the server's Config.
func startKBSWith(t testing.TB, configure func(*server.Config)) *kbsEnv {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{DataDir: t.TempDir(), AdminKeys: []ed25519.PublicKey{pub}}
	if configure != nil {
		configure(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv.Handler())
	t.Cleanup(func() {
		ts.Close()
		if err := srv.Close(); err != nil {
			t.Errorf("close kbs: %v", err)
		}
	})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	admin, err := adminclient.New(ts.URL, priv, adminclient.WithCACert(caPEM))
	if err != nil {
		t.Fatal(err)
	}
	return &kbsEnv{url: ts.URL, caPEM: caPEM, admin: admin, srv: srv, ts: ts}
}

// guest returns a fresh attestation-agent client (new TEE key, new session).
func (k *kbsEnv) guest(t testing.TB) *rcar.Client {
	t.Helper()
	c, err := rcar.New(rcar.Config{URL: k.url, CACertPEM: k.caPEM, Provider: sample.New("1"), Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// transport is an HTTP transport that trusts the KBS's certificate.
func (k *kbsEnv) transport() *http.Transport {
	if k.ts != nil {
		return k.ts.Client().Transport.(*http.Transport)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.caPEM)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

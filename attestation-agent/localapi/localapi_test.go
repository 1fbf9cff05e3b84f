package localapi

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/attestationv1"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
)

type fakeKBS struct {
	resources map[string][]byte
	tokenErr  error
}

func (f *fakeKBS) GetResource(_ context.Context, p kbstypes.ResourcePath) ([]byte, error) {
	v, ok := f.resources[p.String()]
	if !ok {
		return nil, &rcar.KBSError{Op: "resource " + p.String(), Status: 404, Detail: "no such resource"}
	}
	return v, nil
}

func (f *fakeKBS) Token(context.Context) (string, error) {
	if f.tokenErr != nil {
		return "", f.tokenErr
	}
	return "header.claims.sig", nil
}

func client(t *testing.T, kbs KBS) attestationv1.AttestationAgentClient {
	t.Helper()
	dir, err := os.MkdirTemp("", "la")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "aa.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	New(kbs, sample.New("")).Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return attestationv1.NewAttestationAgentClient(cc)
}

func TestGetResource(t *testing.T) {
	c := client(t, &fakeKBS{resources: map[string][]byte{"default/key/1": []byte("v")}})
	tests := []struct {
		path     string
		wantCode codes.Code
	}{
		{"default/key/1", codes.OK},
		{"kbs:///default/key/1", codes.OK},
		{"default/key/2", codes.NotFound},
		{"../key/1", codes.InvalidArgument},
		{"default/key", codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := c.GetResource(context.Background(), &attestationv1.GetResourceRequest{Path: tc.path})
			if status.Code(err) != tc.wantCode {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tc.wantCode)
			}
			if tc.wantCode == codes.OK && string(resp.GetResource()) != "v" {
				t.Errorf("resource = %q", resp.GetResource())
			}
		})
	}
}

func TestGetToken(t *testing.T) {
	resp, err := client(t, &fakeKBS{}).GetToken(context.Background(), &attestationv1.GetTokenRequest{})
	if err != nil || resp.GetToken() != "header.claims.sig" {
		t.Fatalf("GetToken = %q, %v", resp.GetToken(), err)
	}
	_, err = client(t, &fakeKBS{tokenErr: errors.New("cannot reach KBS")}).GetToken(context.Background(), &attestationv1.GetTokenRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "cannot reach KBS") {
		t.Fatalf("GetToken error = %v, want Unavailable naming the cause", err)
	}
}

func TestGetEvidence(t *testing.T) {
	c := client(t, &fakeKBS{})
	runtime := []byte(`{"nonce":"abc"}`)
	resp, err := c.GetEvidence(context.Background(), &attestationv1.GetEvidenceRequest{RuntimeData: runtime})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTee() != kbstypes.TeeSample {
		t.Errorf("tee = %q", resp.GetTee())
	}
	var ev kbstypes.SampleEvidence
	if err := json.Unmarshal(resp.GetEvidence(), &ev); err != nil {
		t.Fatal(err)
	}
	rd, _ := base64.StdEncoding.DecodeString(ev.ReportData)
	sum := sha512.Sum384(append([]byte("cloak-localapi-1"), runtime...))
	if !bytes.Equal(rd[:48], sum[:]) || string(rd[48:]) != "cloak-localapi-1" {
		t.Errorf("report data = %x, want SHA-384(tag || runtime) || tag", rd)
	}

	_, err = c.GetEvidence(context.Background(), &attestationv1.GetEvidenceRequest{RuntimeData: make([]byte, MaxRuntimeData+1)})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("oversized runtime data: %v, want InvalidArgument", err)
	}
}

// TestLocalReportDataNeverMatchesKBSBinding: a caller that hands over the
// canonical KBS binding document, bare or after the tag, still does not get
// KBS report data in any TEE's field: 64 bytes (snp, tdx), the first 32
// (tpm) or the unpadded 48 (sample).
func TestLocalReportDataNeverMatchesKBSBinding(t *testing.T) {
	pub := json.RawMessage(`{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}`)
	digest, err := kbstypes.RuntimeDataDigest("", "bm9uY2U=", pub)
	if err != nil {
		t.Fatal(err)
	}
	doc := []byte(`{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"crv":"P-256","kty":"EC","x":"AA","y":"AA"}}`)
	if sum := sha512.Sum384(doc); !bytes.Equal(sum[:], digest) {
		t.Fatal("test document is not the canonical binding; fix the test")
	}
	padded, _ := kbstypes.PadReportData(digest)
	for _, runtime := range [][]byte{doc, append([]byte("cloak-localapi-1"), doc...)} {
		got := LocalReportData(runtime)
		if len(got) != kbstypes.ReportDataSize {
			t.Fatalf("len = %d", len(got))
		}
		if bytes.Equal(got, padded) || bytes.Equal(got[:48], digest) ||
			bytes.Equal(kbstypes.TPMReportData(got), kbstypes.TPMReportData(digest)) {
			t.Fatalf("local report data %x matches the KBS binding %x in some TEE's field", got, digest)
		}
	}
}

package cdh

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cloak-containers/cloak/api/attestationv1"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
	"github.com/cloak-containers/cloak/attestation-agent/localapi"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
)

// fakeKBS stands behind the real local API: what cloak-aa's rcar client
// would return for each resource.
type fakeKBS struct {
	mu        sync.Mutex
	resources map[string][]byte
	denied    map[string]string // path -> the resource policy's reason
	down      bool
	slow      time.Duration // each answer takes this long
	calls     int
}

func (f *fakeKBS) GetResource(_ context.Context, p kbstypes.ResourcePath) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	time.Sleep(f.slow)
	if f.down {
		return nil, &rcar.UnreachableError{URL: "https://10.0.2.2:8080", Attempts: 6, Elapsed: 5 * time.Second, Last: errors.New("dial tcp 10.0.2.2:8080: connect: connection refused")}
	}
	if why, ok := f.denied[p.String()]; ok {
		return nil, &rcar.KBSError{Op: "resource " + p.String(), Status: http.StatusForbidden, Check: "resource_policy", Detail: why}
	}
	v, ok := f.resources[p.String()]
	if !ok {
		return nil, &rcar.KBSError{Op: "resource " + p.String(), Status: http.StatusNotFound, Detail: "no such resource"}
	}
	return v, nil
}

func (f *fakeKBS) Token(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return "", &rcar.UnreachableError{URL: "https://10.0.2.2:8080", Attempts: 6, Last: errors.New("dial tcp 10.0.2.2:8080: connect: connection refused")}
	}
	return "eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2ln", nil
}

// aaClient is the guest agent's side of cloak-aa's local API, as
// guest-image/attester calls it.
type aaClient struct {
	c attestationv1.AttestationAgentClient
}

func (a aaClient) GetResource(ctx context.Context, uri string) ([]byte, error) {
	r, err := a.c.GetResource(ctx, &attestationv1.GetResourceRequest{Path: uri})
	return r.GetResource(), err
}

func (a aaClient) Token(ctx context.Context) (string, error) {
	r, err := a.c.GetToken(ctx, &attestationv1.GetTokenRequest{})
	return r.GetToken(), err
}

// startAA serves the real local API over a unix socket in front of kbs.
func startAA(t *testing.T, kbs localapi.KBS) Agent {
	t.Helper()
	dir, err := os.MkdirTemp("", "cdh")
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
	localapi.New(kbs, sample.New("")).Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return aaClient{attestationv1.NewAttestationAgentClient(conn)}
}

func startServer(t *testing.T, a Agent, f Feature) string {
	t.Helper()
	s, err := Start("127.0.0.1:0", a, f, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return "http://" + s.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestServer(t *testing.T) {
	kbs := &fakeKBS{
		resources: map[string][]byte{"default/app/db-password": []byte("s3cret\x00bytes")},
		denied:    map[string]string{"default/app/other": `resource "default/app/other" is not this workload's`},
	}
	base := startServer(t, startAA(t, kbs), FeatureAll)

	tests := []struct {
		name, target string
		status       int
		body         string // exact body, or with want a substring
		want         []string
		never        []string
	}{
		{name: "resource", target: "/cdh/resource/default/app/db-password", status: 200, body: "s3cret\x00bytes"},
		{name: "policy denial", target: "/cdh/resource/default/app/other", status: 403,
			want: []string{"kbs denied resource default/app/other", "resource_policy", `is not this workload's`}},
		{name: "not found", target: "/cdh/resource/default/app/missing", status: 404, want: []string{"kbs has no resource default/app/missing"}},
		{name: "token", target: "/aa/token?token_type=kbs", status: 200, body: `{"token":"eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2ln"}`},
		{name: "other token type", target: "/aa/token?token_type=coco_as", status: 400, want: []string{"want token_type=kbs"}},
		{name: "dot segment", target: "/cdh/resource/default/../secret", status: 400, want: []string{"want /cdh/resource/"}},
		{name: "escaped slash", target: "/cdh/resource/default%2Fapp/x/y", status: 400, want: []string{"percent-escapes"}},
		{name: "four segments", target: "/cdh/resource/a/b/c/d", status: 400},
		{name: "query on resource", target: "/cdh/resource/a/b/c?x=1", status: 400},
		{name: "unknown endpoint", target: "/aa/evidence?runtime_data=x", status: 404, want: []string{"no endpoint"}},
		{name: "long target", target: "/cdh/resource/" + strings.Repeat("a", MaxRequestURI), status: 414, never: []string{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(t, base+tt.target)
			if code != tt.status {
				t.Fatalf("status %d, body %q; want %d", code, body, tt.status)
			}
			if tt.body != "" && body != tt.body {
				t.Errorf("body %q, want %q", body, tt.body)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("body %q lacks %q", body, w)
				}
			}
			for _, n := range tt.never {
				if strings.Contains(body, n) {
					t.Errorf("body %q contains %q", body, n)
				}
			}
		})
	}

	t.Run("client half-closes", func(t *testing.T) {
		// As `printf 'GET ...' | nc 127.0.0.1 8006` does: the request,
		// then EOF on the client's side, then it reads the answer (which
		// takes long enough for the server to notice the EOF first).
		kbs.mu.Lock()
		kbs.slow = 300 * time.Millisecond
		kbs.mu.Unlock()
		defer func() { kbs.mu.Lock(); kbs.slow = 0; kbs.mu.Unlock() }()
		c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET /cdh/resource/default/app/other HTTP/1.0\r\n\r\n")
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(b), "HTTP/1.0 403 Forbidden") || !strings.Contains(string(b), "is not this workload's") {
			t.Fatalf("answer %q; want the 403 with the KBS's reason", b)
		}
	})

	t.Run("POST refused", func(t *testing.T) {
		resp, err := http.Post(base+"/cdh/resource/default/app/db-password", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("POST: status %d, want 405", resp.StatusCode)
		}
	})

	t.Run("KBS down", func(t *testing.T) {
		kbs.mu.Lock()
		kbs.down = true
		kbs.mu.Unlock()
		defer func() { kbs.mu.Lock(); kbs.down = false; kbs.mu.Unlock() }()
		code, body := get(t, base+"/cdh/resource/default/app/db-password")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "did not answer the guest within the attestation agent's retry budget") {
			t.Fatalf("status %d body %q; want 503 naming the retry budget", code, body)
		}
		// The address and the dial error stay in the guest.
		for _, n := range []string{"10.0.2.2", "connection refused", "s3cret"} {
			if strings.Contains(body, n) {
				t.Errorf("503 body %q leaks %q", body, n)
			}
		}
	})
}

func TestFeatures(t *testing.T) {
	kbs := &fakeKBS{resources: map[string][]byte{"default/app/key": []byte("k")}}
	aa := startAA(t, kbs)
	for _, tt := range []struct {
		f               Feature
		resource, token int
	}{
		{FeatureNone, 403, 403},
		{FeatureResource, 200, 403},
		{FeatureAttestation, 403, 200},
		{FeatureAll, 200, 200},
	} {
		t.Run(string(tt.f), func(t *testing.T) {
			base := startServer(t, aa, tt.f)
			kbs.mu.Lock()
			before := kbs.calls
			kbs.mu.Unlock()
			code, body := get(t, base+"/cdh/resource/default/app/key")
			if code != tt.resource {
				t.Errorf("resource: status %d (%q), want %d", code, body, tt.resource)
			}
			if code == 403 && !strings.Contains(body, "agent policy does not enable the resource API") {
				t.Errorf("resource refusal %q does not name the agent policy", body)
			}
			if code, body := get(t, base+"/aa/token?token_type=kbs"); code != tt.token {
				t.Errorf("token: status %d (%q), want %d", code, body, tt.token)
			}
			kbs.mu.Lock()
			calls := kbs.calls - before
			kbs.mu.Unlock()
			if tt.resource == 403 && calls != 0 {
				t.Errorf("a refused feature still asked the KBS %d times", calls)
			}
		})
	}
}

func TestStartRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:8006", "[::]:8006", "10.0.2.15:8006", ":8006", "localhost:8006"} {
		if s, err := Start(addr, nil, FeatureAll, nil); err == nil {
			s.Close()
			t.Errorf("Start(%q) listened; want a refusal", addr)
		} else if !strings.Contains(err.Error(), "loopback") {
			t.Errorf("Start(%q): %v; want it to say the address must be loopback", addr, err)
		}
	}
}

// TestLoopbackOnly: a connection that reaches the socket from a
// non-loopback peer is closed without an answer. The listener is bound to
// all addresses here so that a non-loopback peer can connect at all (Start
// never does that).
func TestLoopbackOnly(t *testing.T) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var peer net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			peer = n.IP
			break
		}
	}
	if peer == nil {
		t.Skip("no non-loopback IPv4 address on this machine to connect from")
	}
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(startAA(t, &fakeKBS{}), FeatureAll, nil), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(loopbackOnly{l}) }()
	t.Cleanup(func() { srv.Close() })
	port := l.Addr().(*net.TCPAddr).Port

	c, err := net.Dial("tcp4", net.JoinHostPort(peer.String(), itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /aa/token?token_type=kbs HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if len(b) != 0 || err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("non-loopback peer %s got %q (%v); want the connection closed unanswered", peer, b, err)
	}
	if code, _ := get(t, "http://127.0.0.1:"+itoa(port)+"/aa/token?token_type=kbs"); code != 200 {
		t.Fatalf("loopback peer: status %d, want 200", code)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

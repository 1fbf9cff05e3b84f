package rcar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/attestation-agent/evidence/sample"
)

// closedAddr returns a loopback address nothing listens on: connecting to
// it is refused, as when the KBS process is stopped.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// blackHole accepts TCP connections and never reads from or writes to
// them, like a KBS stopped with SIGSTOP (the kernel still completes the
// TCP handshake). It counts the connections.
type blackHole struct {
	l        net.Listener
	accepted atomic.Int32
	mu       sync.Mutex
	conns    []net.Conn
}

func newBlackHole(t *testing.T) *blackHole {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackHole{l: l}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

// blackHoleKBS returns the URL of a new black hole and its connection count.
func blackHoleKBS(t *testing.T) (string, func() int) {
	b := newBlackHole(t)
	return "https://" + b.l.Addr().String(), func() int { return int(b.accepted.Load()) }
}

// hungKBS completes TLS and reads the request, then never answers (a KBS
// stuck behind its listener). It counts the requests.
func hungKBS(t *testing.T) (*fakeKBS, *atomic.Int32) {
	f := newFakeKBS(t)
	var n atomic.Int32
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // runs before the server's Close
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		// Reading the body lets the server notice the client hanging up.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	})
	return f, &n
}

const downHint = "; check that the KBS is running and reachable from the guest at the URL in the pod's initdata"

func TestKBSDown(t *testing.T) {
	cert := newFakeKBS(t).certPEM()
	tests := []struct {
		name string
		// setup returns the KBS URL and the number of requests (or
		// connections) the KBS saw, nil when none can be counted.
		setup        func(t *testing.T) (string, func() int)
		retries      int
		timeout      time.Duration
		budget       time.Duration
		wantAttempts int
		wantLast     string // regexp of the last error
		wantRefused  bool
	}{{
		name:         "connection refused",
		setup:        func(t *testing.T) (string, func() int) { return "https://" + closedAddr(t), nil },
		retries:      3,
		timeout:      time.Second,
		budget:       5 * time.Second,
		wantAttempts: 4,
		wantLast:     `dial tcp 127\.0\.0\.1:\d+: connect: connection refused`,
		wantRefused:  true,
	}, {
		name:         "black hole",
		setup:        blackHoleKBS,
		retries:      2,
		timeout:      100 * time.Millisecond,
		budget:       5 * time.Second,
		wantAttempts: 3,
		wantLast:     `timed out after 100ms waiting for the KBS's response`,
	}, {
		name: "request read, never answered",
		setup: func(t *testing.T) (string, func() int) {
			f, n := hungKBS(t)
			return f.srv.URL, func() int { return int(n.Load()) }
		},
		retries:      1,
		timeout:      100 * time.Millisecond,
		budget:       5 * time.Second,
		wantAttempts: 2,
		wantLast:     `timed out after 100ms waiting for the KBS's response`,
	}, {
		name:         "budget ends a hung request",
		setup:        blackHoleKBS,
		retries:      5,
		timeout:      time.Minute,
		budget:       300 * time.Millisecond,
		wantAttempts: 1,
		wantLast:     `timed out after 300ms waiting for the KBS's response`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url, seen := tc.setup(t)
			c, err := New(Config{
				URL: url, CACertPEM: cert, Provider: sample.New(""),
				Retries: tc.retries, Backoff: time.Millisecond, RequestTimeout: tc.timeout, Budget: tc.budget,
			})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = c.GetResource(context.Background(), keyPath)
			took := time.Since(start)
			t.Logf("error: %v", err)

			var ue *UnreachableError
			if !errors.As(err, &ue) || !errors.Is(err, ErrUnreachable) {
				t.Fatalf("error = %v, want an UnreachableError", err)
			}
			tries := fmt.Sprintf("%d attempts", tc.wantAttempts)
			if tc.wantAttempts == 1 {
				tries = "1 attempt"
			}
			want := regexp.MustCompile(`^KBS ` + regexp.QuoteMeta(url) + ` did not answer: ` + tries + ` over \d+\.\ds, last error: attestation request \(auth\): ` +
				tc.wantLast + regexp.QuoteMeta(downHint) + `$`)
			if !want.MatchString(err.Error()) {
				t.Errorf("error = %q\nwant match %s", err, want)
			}
			if ue.Attempts != tc.wantAttempts {
				t.Errorf("attempts = %d, want %d", ue.Attempts, tc.wantAttempts)
			}
			if seen != nil && seen() != tc.wantAttempts {
				t.Errorf("the KBS saw %d requests, want %d", seen(), tc.wantAttempts)
			}
			if errors.Is(err, syscall.ECONNREFUSED) != tc.wantRefused {
				t.Errorf("errors.Is(ECONNREFUSED) = %v, want %v", !tc.wantRefused, tc.wantRefused)
			}
			// The budget bounds the call: no attempt starts after it and
			// one in flight is cut at it (slack for a loaded machine).
			if ue.Elapsed > tc.budget+200*time.Millisecond || took > tc.budget+time.Second {
				t.Errorf("gave up after %v (reported %v), budget %v", took, ue.Elapsed, tc.budget)
			}
			// The keyprovider passes the text on as Unavailable, not as a
			// deadline of its own caller.
			st := status.Convert(StatusError(err))
			if st.Code() != codes.Unavailable || st.Message() != err.Error() || !hasUnreachableInfo(st) {
				t.Errorf("StatusError = %v (details %v), want Unavailable with the same message and reason %s", st, st.Details(), ReasonUnreachable)
			}
		})
	}
}

func TestBudgetStopsRetries(t *testing.T) {
	// Many retries allowed, a short budget: the budget ends them.
	budget := 300 * time.Millisecond
	c, err := New(Config{
		URL: "https://" + closedAddr(t), Provider: sample.New(""),
		Retries: 1000, Backoff: 20 * time.Millisecond, Budget: budget,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Attest(context.Background())
	var ue *UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("error = %v, want an UnreachableError", err)
	}
	if ue.Attempts < 2 || ue.Attempts >= 1000 {
		t.Errorf("attempts = %d, want several, ended by the budget", ue.Attempts)
	}
	if ue.Elapsed > budget+200*time.Millisecond {
		t.Errorf("gave up after %v, budget %v", ue.Elapsed, budget)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error = %v, want the last refusal kept", err)
	}
}

// refusingDialer dials for real and, after the KBS refused a number of
// connections, starts it on the same address: a KBS that is down for the
// first attempts, then comes up.
type refusingDialer struct {
	addr     string
	downFor  int
	refused  atomic.Int32
	listener chan net.Listener
}

func (d *refusingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		return c, err
	}
	if int(d.refused.Add(1)) == d.downFor {
		l, lerr := net.Listen("tcp", d.addr)
		if lerr != nil {
			return nil, lerr
		}
		d.listener <- l
	}
	return nil, err
}

// lateListener is the fake KBS's listener before it exists: Accept waits
// for the real one.
type lateListener struct {
	addr  net.Addr
	ready chan net.Listener
	done  chan struct{}

	mu     sync.Mutex
	l      net.Listener
	closed bool
}

func (l *lateListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	cur := l.l
	l.mu.Unlock()
	if cur == nil {
		select {
		case cur = <-l.ready:
		case <-l.done:
			return nil, net.ErrClosed
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			cur.Close()
			return nil, net.ErrClosed
		}
		l.l = cur
		l.mu.Unlock()
	}
	return cur.Accept()
}

func (l *lateListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	close(l.done)
	select {
	case late := <-l.ready: // started, never accepted from
		late.Close()
	default:
	}
	if l.l != nil {
		return l.l.Close()
	}
	return nil
}

func (l *lateListener) Addr() net.Addr { return l.addr }

func TestKBSComesUp(t *testing.T) {
	addr := closedAddr(t)
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	d := &refusingDialer{addr: addr, downFor: 2, listener: make(chan net.Listener, 1)}
	f := newFakeKBSOn(t, &lateListener{addr: tcp, ready: d.listener, done: make(chan struct{})})
	f.resources["default/key/1"] = []byte("k")
	tr := f.srv.Client().Transport.(*http.Transport).Clone()
	tr.DialContext = d.DialContext
	c := newClient(t, f, func(c *Config) {
		c.HTTPClient = &http.Client{Transport: tr}
		c.Retries = 5
		c.Budget = 5 * time.Second
	})
	got, err := c.GetResource(context.Background(), keyPath)
	if err != nil || string(got) != "k" {
		t.Fatalf("GetResource = %q, %v; want the resource once the KBS is up", got, err)
	}
	if n := d.refused.Load(); n != 2 {
		t.Errorf("refused connections = %d, want 2", n)
	}
	if n := f.count("auth"); n != 1 {
		t.Errorf("auth requests = %d, want 1", n)
	}
}

func TestRefusalIsNotUnreachable(t *testing.T) {
	f := newFakeKBS(t)
	f.denyDetail = "the resource policy denies this workload"
	c := newClient(t, f, nil)
	_, err := c.GetResource(context.Background(), keyPath)
	if err == nil || errors.Is(err, ErrUnreachable) || strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("error = %v, want a refusal, not an unreachable KBS", err)
	}
	if n := f.count("resource"); n != 1 {
		t.Errorf("resource requests = %d, want 1 (a refusal is not retried)", n)
	}
	if st := status.Convert(StatusError(err)); st.Code() != codes.PermissionDenied || hasUnreachableInfo(st) {
		t.Errorf("StatusError = %v (details %v), want PermissionDenied without reason %s", st, st.Details(), ReasonUnreachable)
	}
}

func hasUnreachableInfo(st *status.Status) bool {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain && info.GetReason() == ReasonUnreachable {
			return true
		}
	}
	return false
}

package transport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// fakePort behaves like a virtio-serial port as the guest sees it: reads
// see EOF once the host detaches, and a new attachment brings a new stream
// of bytes on the same port.
type fakePort struct {
	mu        sync.Mutex
	in        *os.File // guest reads
	hostW     *os.File // host writes
	out       *os.File // guest writes
	hostR     *os.File // host reads
	connected atomic.Bool
}

func newFakePort(t *testing.T) *fakePort {
	p := &fakePort{}
	var err error
	if p.hostR, p.out, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.hostR.Close(); p.out.Close() })
	p.attach(t)
	p.detach()
	return p
}

func (p *fakePort) attach(t *testing.T) {
	in, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); w.Close() })
	p.mu.Lock()
	p.in, p.hostW = in, w
	p.mu.Unlock()
	p.connected.Store(true)
}

func (p *fakePort) detach() {
	p.connected.Store(false)
	p.mu.Lock()
	p.hostW.Close()
	p.mu.Unlock()
}

func (p *fakePort) current() *os.File {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.in
}

func (p *fakePort) Read(b []byte) (int, error)        { return p.current().Read(b) }
func (p *fakePort) Write(b []byte) (int, error)       { return p.out.Write(b) }
func (p *fakePort) Close() error                      { return nil }
func (p *fakePort) SetReadDeadline(t time.Time) error { return p.current().SetReadDeadline(t) }
func (p *fakePort) hostConnected() (bool, error)      { return p.connected.Load(), nil }

// hello is the host's side of the connection handshake: it sends junk (as
// a previous connection may leave behind), then the hello line, and checks
// the agent's welcome.
func (p *fakePort) hello(t *testing.T, token string) {
	t.Helper()
	p.mu.Lock()
	w := p.hostW
	p.mu.Unlock()
	if _, err := w.Write([]byte("PRI * HTTP/2.0\r\n\x00\x00\n" + agentapi.SerialHello + " nothex\n" + agentapi.SerialHello + " " + token + "\n")); err != nil {
		t.Fatal(err)
	}
	want := agentapi.SerialWelcome + " " + token + "\n"
	if got := readString(t, p.hostR, len(want)); got != want {
		t.Fatalf("welcome %q, want %q", got, want)
	}
}

type acceptResult struct {
	c   net.Conn
	err error
}

func acceptAsync(l net.Listener) chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := l.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

func mustWait(t *testing.T, ch chan acceptResult, what string) net.Conn {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r.c
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: Accept did not return", what)
	}
	return nil
}

func mustBlock(t *testing.T, ch chan acceptResult, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: Accept returned %v, %v; want it to wait", what, r.c, r.err)
	case <-time.After(3 * hostPollInterval):
	}
}

func readString(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSerialListenerReconnect(t *testing.T) {
	p := newFakePort(t)
	l := newSerialListener(p, "/dev/vport0p1")

	// No host yet: Accept waits until one attaches.
	first := acceptAsync(l)
	mustBlock(t, first, "before the host attaches")
	p.attach(t)
	p.hello(t, "01")
	c1 := mustWait(t, first, "host attached")
	p.hostW.Write([]byte("ping"))
	if got := readString(t, c1, 4); got != "ping" {
		t.Errorf("read %q, want ping", got)
	}
	c1.Write([]byte("pong"))
	if got := readString(t, p.hostR, 4); got != "pong" {
		t.Errorf("host read %q, want pong", got)
	}

	// One connection at a time: the port is one byte stream.
	second := acceptAsync(l)
	mustBlock(t, second, "while the first connection is open")

	// The host detaches: the connection sees EOF; the next Accept waits for
	// the host, not for data.
	p.detach()
	if _, err := c1.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after detach = %v, want EOF", err)
	}
	mustBlock(t, second, "while the host is away")
	p.attach(t)
	p.hello(t, "02")
	c2 := mustWait(t, second, "host re-attached")
	if _, err := c1.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write on the old connection = %v, want ErrClosed", err)
	}
	p.hostW.Write([]byte("again"))
	if got := readString(t, c2, 5); got != "again" {
		t.Errorf("read %q, want again", got)
	}

	// Closing a connection interrupts its blocked read and frees the port.
	readErr := make(chan error, 1)
	go func() {
		_, err := c2.Read(make([]byte, 1))
		readErr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c2.Close()
	select {
	case err := <-readErr:
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
			t.Errorf("interrupted read = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not interrupt Read")
	}
	third := acceptAsync(l)
	p.hello(t, "03")
	c3 := mustWait(t, third, "after Close")
	p.hostW.Write([]byte("3"))
	if got := readString(t, c3, 1); got != "3" {
		t.Errorf("read %q, want 3", got)
	}

	c3.Close()
	pending := acceptAsync(l)
	p.detach()
	mustBlock(t, pending, "host away")
	l.Close()
	select {
	case r := <-pending:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Errorf("Accept after Close = %v, want ErrClosed", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end Accept")
	}
}

// fakeTree builds /sys/class/virtio-ports and /dev entries for ports.
func fakeTree(t *testing.T, ports map[string]string) roots {
	r := roots{sys: t.TempDir(), dev: t.TempDir()}
	for dev, name := range ports {
		d := filepath.Join(r.sys, "class", "virtio-ports", dev)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644)
		os.WriteFile(filepath.Join(r.dev, dev), nil, 0o600)
	}
	return r
}

func TestFindPort(t *testing.T) {
	r := fakeTree(t, map[string]string{"vport0p1": "org.qemu.guest_agent.0", "vport1p1": agentapi.AgentPortName})
	got, err := FindPort(r.sys, r.dev, agentapi.AgentPortName)
	if err != nil || got != filepath.Join(r.dev, "vport1p1") {
		t.Fatalf("FindPort = %q, %v; want vport1p1", got, err)
	}
	if _, err := FindPort(r.sys, r.dev, "other"); err == nil {
		t.Error("found a port that does not exist")
	}
	// A /dev/virtio-ports link wins.
	os.MkdirAll(filepath.Join(r.dev, "virtio-ports"), 0o755)
	os.Symlink("../vport0p1", filepath.Join(r.dev, "virtio-ports", agentapi.AgentPortName))
	if got, _ := FindPort(r.sys, r.dev, agentapi.AgentPortName); got != filepath.Join(r.dev, "virtio-ports", agentapi.AgentPortName) {
		t.Errorf("FindPort = %q, want the link", got)
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestListenChoosesChannel(t *testing.T) {
	noVsock := func() (uint32, error) { return 0, errors.New("no vsock") }
	r := fakeTree(t, map[string]string{"vport0p1": agentapi.AgentPortName})
	l, err := listen(context.Background(), quiet, r, noVsock)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr().Network() != "virtio-serial" || l.Addr().String() != filepath.Join(r.dev, "vport0p1") {
		t.Errorf("addr = %s %s", l.Addr().Network(), l.Addr())
	}
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = listen(ctx, quiet, fakeTree(t, nil), noVsock)
	if err == nil || !strings.Contains(err.Error(), "no virtio-serial port named cloak.agent") {
		t.Fatalf("error = %v, want no channel", err)
	}
}

func TestVsock(t *testing.T) {
	if _, err := os.Stat("/dev/vsock"); err != nil {
		t.Skip("no /dev/vsock on this machine")
	}
	if _, err := vsockContextID(); err != nil {
		t.Skipf("vsock has no guest transport here: %v", err)
	}
	l, err := listen(context.Background(), quiet, fakeTree(t, nil), vsockContextID)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Addr().Network() != "vsock" {
		t.Errorf("network = %s, want vsock", l.Addr().Network())
	}
}

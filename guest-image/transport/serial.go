package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// What the guest observes on a virtio-serial port (drivers/char/
// virtio_console.c): the port stays open across host connections; QEMU
// tells the driver when its chardev backend (the shim's unix socket)
// connects or disconnects. While the host is disconnected, read(2) with no
// buffered data returns 0 at once (EOF, it does not block), poll(2)
// reports POLLHUP (with POLLIN) at once, and bytes the guest writes are
// discarded by QEMU. Once the host connects again, read blocks for data as
// usual and POLLHUP clears. Since poll cannot block while the host is
// away, the listener checks for POLLHUP every hostPollInterval; that costs
// a few wakeups a second only while no host is attached.
const hostPollInterval = 50 * time.Millisecond

// port is the agent's end of a virtio-serial channel; tests substitute a
// pipe-backed fake.
type port interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
	// hostConnected reports whether the host side is attached, without
	// blocking.
	hostConnected() (bool, error)
}

// devicePort is a /dev/vportNpM opened by the agent.
type devicePort struct{ *os.File }

func (p devicePort) hostConnected() (bool, error) {
	raw, err := p.SyscallConn() // not Fd(): that would make the fd blocking
	if err != nil {
		return false, err
	}
	var revents int16
	var perr error
	err = raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		_, perr = unix.Poll(fds, 0)
		revents = fds[0].Revents
	})
	if err == nil {
		err = perr
	}
	if err != nil && !errors.Is(err, unix.EINTR) {
		return false, err
	}
	return revents&unix.POLLHUP == 0 && revents&unix.POLLOUT != 0, nil
}

func listenSerial(dev string) (net.Listener, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open agent port %s: %w", dev, err)
	}
	return newSerialListener(devicePort{f}, dev), nil
}

// serialListener turns the one byte stream of a port into a sequence of
// connections: one per host attachment. A connection ends when the host
// detaches (its reads see EOF) or when the server closes it; the next
// Accept then waits for the host to attach again. Containers and other
// agent state are untouched by this; only the gRPC connection is new.
type serialListener struct {
	port   port
	addr   serialAddr
	idle   chan struct{} // holds a token while no connection is open
	closed chan struct{}
	once   sync.Once
	// reads counts Reads in flight on the port, so that a new connection
	// never starts while a read of the previous one could still take its
	// bytes.
	reads sync.WaitGroup
}

func newSerialListener(p port, dev string) *serialListener {
	l := &serialListener{port: p, addr: serialAddr(dev), idle: make(chan struct{}, 1), closed: make(chan struct{})}
	l.idle <- struct{}{}
	return l
}

func (l *serialListener) Accept() (net.Conn, error) {
	select {
	case <-l.idle:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	l.reads.Wait()
	for {
		up, err := l.port.hostConnected()
		if err != nil {
			l.idle <- struct{}{}
			return nil, fmt.Errorf("poll agent port %s: %w", l.addr, err)
		}
		if !up {
			select {
			case <-l.closed:
				return nil, net.ErrClosed
			case <-time.After(hostPollInterval):
			}
			continue
		}
		// A host attachment becomes a connection only after its hello; if
		// none comes (the host left, or its hello was eaten by the previous
		// connection), wait for the host to try again.
		err = l.handshake()
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		default:
		}
		if err == nil {
			break
		}
	}
	if err := l.port.SetReadDeadline(time.Time{}); err != nil {
		l.idle <- struct{}{}
		return nil, err
	}
	return &serialConn{l: l}, nil
}

// helloWait bounds how long the agent waits for a hello line before it
// checks the port again.
const helloWait = 5 * time.Second

// handshake reads lines until "<SerialHello> <token>" and answers with the
// welcome line. Bytes before it (left over from an earlier connection) are
// discarded. Reading byte by byte keeps every byte after the hello for gRPC.
func (l *serialListener) handshake() error {
	if err := l.port.SetReadDeadline(time.Now().Add(helloWait)); err != nil {
		return err
	}
	line := make([]byte, 0, agentapi.SerialHelloMax)
	long := false // the current line is over the limit: skip to its end
	var b [1]byte
	for {
		n, err := l.port.Read(b[:])
		if err != nil {
			return err
		}
		if n == 0 {
			continue
		}
		if b[0] != '\n' {
			if len(line) < agentapi.SerialHelloMax {
				line = append(line, b[0])
			} else {
				long = true
			}
			continue
		}
		token, ok := strings.CutPrefix(string(line), agentapi.SerialHello+" ")
		if !long && ok && validToken(token) {
			_, err := l.port.Write([]byte(agentapi.SerialWelcome + " " + token + "\n"))
			return err
		}
		line, long = line[:0], false
	}
}

func validToken(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}

func (l *serialListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		err = l.port.Close()
	})
	return err
}

func (l *serialListener) Addr() net.Addr { return l.addr }

// serialConn is one host attachment on the port.
type serialConn struct {
	l    *serialListener
	mu   sync.Mutex
	done bool
}

func (c *serialConn) ended() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// end releases the port to the next Accept, once.
func (c *serialConn) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.done {
		c.done = true
		c.l.idle <- struct{}{}
	}
}

func (c *serialConn) Read(b []byte) (int, error) {
	c.l.reads.Add(1)
	defer c.l.reads.Done()
	if c.ended() {
		return 0, io.EOF
	}
	n, err := c.l.port.Read(b)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Close interrupted this read.
		return n, net.ErrClosed
	case errors.Is(err, io.EOF):
		// The host detached: read(2) returned 0.
		c.end()
	}
	return n, err
}

func (c *serialConn) Write(b []byte) (int, error) {
	if c.ended() {
		return 0, net.ErrClosed
	}
	return c.l.port.Write(b)
}

// Close ends the connection and interrupts a blocked Read, leaving the
// port open for the next host attachment.
func (c *serialConn) Close() error {
	if c.ended() {
		return nil
	}
	err := c.l.port.SetReadDeadline(time.Now())
	c.end()
	return err
}

func (c *serialConn) LocalAddr() net.Addr  { return c.l.addr }
func (c *serialConn) RemoteAddr() net.Addr { return serialAddr("host") }

// Deadlines are not offered: a deadline on the shared port would outlive
// the connection. gRPC's server only sets one around its handshake and
// ignores this error.
func (c *serialConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (c *serialConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (c *serialConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

type serialAddr string

func (serialAddr) Network() string  { return "virtio-serial" }
func (a serialAddr) String() string { return string(a) }

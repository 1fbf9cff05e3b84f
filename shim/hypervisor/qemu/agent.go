package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// serialHelloWait bounds the wait for the agent's welcome on one attempt.
const serialHelloWait = 3 * time.Second

// serialHandshake starts a virtio-serial connection: hello with a fresh
// token, then the agent's welcome with the same token (see
// agentapi.SerialHello). A welcome for another token is a stale answer to an
// earlier connection and fails this attempt.
func serialHandshake(ctx context.Context, c net.Conn) error {
	tok := make([]byte, 8)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	token := hex.EncodeToString(tok)
	deadline := time.Now().Add(serialHelloWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.Write([]byte(agentapi.SerialHello + " " + token + "\n")); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	line := make([]byte, 0, agentapi.SerialHelloMax)
	var b [1]byte
	for len(line) < agentapi.SerialHelloMax {
		if _, err := c.Read(b[:]); err != nil {
			return fmt.Errorf("no welcome from the agent: %w", err)
		}
		if b[0] == '\n' {
			if string(line) != agentapi.SerialWelcome+" "+token {
				return fmt.Errorf("unexpected welcome %q", line)
			}
			return c.SetDeadline(time.Time{})
		}
		line = append(line, b[0])
	}
	return errors.New("welcome line too long")
}

// Agent wait tuning.
const (
	// agentAttemptTimeout bounds one dial+probe. Over virtio-serial the
	// host's connect succeeds as soon as QEMU runs, and bytes wait in QEMU
	// until the guest opens its port, so a probe against a guest that is
	// still booting hangs rather than fails; the bound turns that into a
	// retry.
	agentAttemptTimeout = 3 * time.Second
	agentRetryInterval  = 100 * time.Millisecond
)

// DialAgent opens a connection to the in-guest agent: the host end of the
// virtio-serial port, or vsock (CID, port).
func (vm *VM) DialAgent(ctx context.Context) (net.Conn, error) {
	switch vm.cfg.Agent.Kind {
	case AgentVsock:
		c, err := vsock.DialContext(ctx, vm.cfg.Agent.CID, vm.cfg.Agent.Port, nil)
		if err != nil {
			return nil, fmt.Errorf("dial agent over vsock %d:%d: %w", vm.cfg.Agent.CID, vm.cfg.Agent.Port, err)
		}
		return c, nil
	default:
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", vm.cfg.AgentSocket())
		if err != nil {
			return nil, fmt.Errorf("dial agent over virtio-serial: %w", err)
		}
		if err := vm.handshake(ctx, c); err != nil {
			c.Close()
			return nil, fmt.Errorf("dial agent over virtio-serial: %w", err)
		}
		return c, nil
	}
}

// WaitAgent dials the agent and runs probe on the connection until probe
// succeeds, QEMU exits, or ctx ends. Each attempt gets its own connection,
// closed after the probe, and at most a few seconds. The error on timeout
// says how long it waited and quotes the guest console's last lines.
//
// Over virtio-serial, probing starts only once the guest has opened the
// port: bytes written before that wait in QEMU and would reach the agent
// as garbage in front of the next attempt's.
func (vm *VM) WaitAgent(ctx context.Context, probe func(ctx context.Context, conn net.Conn) error) error {
	_, err := vm.waitAgent(ctx, probe, false)
	return err
}

// ConnectAgent waits like WaitAgent (the probe being the connection
// handshake itself) and returns the first connection the agent accepted;
// the caller owns it. Keep using it rather than dialling again: over
// virtio-serial a connection closed right before the next one opens can
// swallow the next one's first bytes, which costs a handshake timeout.
func (vm *VM) ConnectAgent(ctx context.Context) (net.Conn, error) {
	return vm.waitAgent(ctx, func(context.Context, net.Conn) error { return nil }, true)
}

func (vm *VM) waitAgent(ctx context.Context, probe func(ctx context.Context, conn net.Conn) error, keep bool) (net.Conn, error) {
	start := time.Now()
	attempts := 0
	var last error
	for {
		ready, changed := true, (<-chan struct{})(nil)
		if vm.cfg.Agent.Kind == AgentVirtioSerial {
			ready, changed = vm.agentPort()
		}
		var retry <-chan time.Time
		if ready {
			attempts++
			var conn net.Conn
			if conn, last = vm.probeAgent(ctx, probe, keep); last == nil {
				vm.log.Debug("qemu: agent answered", "after", time.Since(start), "attempts", attempts)
				return conn, nil
			}
			retry = time.After(agentRetryInterval)
		}
		select {
		case <-retry:
		case <-changed:
		case <-vm.exited:
			why := vm.Wait()
			if why == nil {
				why = errors.New("the guest shut down or rebooted")
			}
			return nil, fmt.Errorf("qemu exited while waiting for the agent (after %s): %w\n%s",
				time.Since(start).Round(time.Millisecond), why, vm.consoleTail())
		case <-ctx.Done():
			waited := time.Since(start).Round(time.Millisecond)
			if attempts == 0 {
				return nil, fmt.Errorf("agent did not answer within %s: the guest never opened virtio-serial port %q (agent not started?)\n%s",
					waited, vm.cfg.Agent.PortName, vm.consoleTail())
			}
			return nil, fmt.Errorf("agent did not answer within %s (%d attempts, last: %v)\n%s",
				waited, attempts, last, vm.consoleTail())
		}
	}
}

// probeAgent dials and probes once; with keep, a connection that passed is
// returned open (deadline cleared), otherwise it is closed.
func (vm *VM) probeAgent(ctx context.Context, probe func(ctx context.Context, conn net.Conn) error, keep bool) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, agentAttemptTimeout)
	defer cancel()
	conn, err := vm.DialAgent(ctx)
	if err != nil {
		return nil, err
	}
	// The deadline also unblocks a probe that ignores ctx and sits in Read.
	if d, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(d); err != nil && !errors.Is(err, net.ErrClosed) {
			conn.Close()
			return nil, fmt.Errorf("agent connection deadline: %w", err)
		}
	}
	err = probe(ctx, conn)
	if err != nil || !keep {
		conn.Close()
		return nil, err
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent connection deadline: %w", err)
	}
	return conn, nil
}

// consoleTail points at the guest console log, where a guest that never
// brought its agent up says why.
func (vm *VM) consoleTail() string {
	if vm.cfg.ConsoleLog == "" {
		return "no guest console log (set Config.ConsoleLog to capture the guest's serial console)"
	}
	return "guest console " + vm.cfg.ConsoleLog + ":\n" + tail(vm.cfg.ConsoleLog, logTailLines)
}

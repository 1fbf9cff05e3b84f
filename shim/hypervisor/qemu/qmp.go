package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/digitalocean/go-qemu/qmp"
)

// go-qemu's qmp package does the QMP handshake, the command/response
// pairing and event filtering. Its generated "raw" API predates QEMU 6 (it
// lacks query-cpus-fast), so the few replies Cloak needs are decoded here.

// maxQMPReply bounds what Cloak decodes from QEMU, which it does not trust.
const maxQMPReply = 1 << 20

// errNoSocket means QEMU has not created its QMP socket yet.
var errNoSocket = errors.New("qmp socket not there yet")

type qmpClient struct {
	mon     *qmp.SocketMonitor
	version string
}

// dialQMP connects and negotiates capabilities. The handshake has no
// timeout of its own in go-qemu, so it runs aside and is abandoned when ctx
// ends or QEMU exits (the caller then kills QEMU, which ends the read).
func dialQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmpClient, error) {
	// A unix connect does not block, so go-qemu's dial needs no timeout.
	mon, err := qmp.NewSocketMonitor("unix", path, 0)
	if err != nil {
		// QEMU binds and listens only after parsing its command line.
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, errNoSocket
		}
		return nil, fmt.Errorf("dial qmp: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err = <-done:
		if err != nil {
			_ = mon.Disconnect()
			return nil, fmt.Errorf("qmp handshake: %w", err)
		}
	case <-ctx.Done():
		// Disconnect must not race with Connect: close once it returns.
		go func() { <-done; _ = mon.Disconnect() }()
		return nil, fmt.Errorf("qmp handshake: %w", ctx.Err())
	case <-exited:
		go func() { <-done; _ = mon.Disconnect() }()
		return nil, errors.New("qmp handshake: qemu exited")
	}
	c := &qmpClient{mon: mon}
	if mon.Version != nil {
		c.version = mon.Version.String()
	}
	return c, nil
}

// run executes one command and returns its "return" member. go-qemu's Run
// cannot be cancelled, so a call abandoned on ctx or exit finishes in the
// background when QEMU answers or its socket closes.
func (c *qmpClient) run(ctx context.Context, exited <-chan struct{}, command string) (json.RawMessage, error) {
	req, err := json.Marshal(qmp.Command{Execute: command})
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	type result struct {
		reply []byte
		err   error
	}
	done := make(chan result, 1)
	go func() {
		reply, err := c.mon.Run(req)
		done <- result{reply, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	case <-exited:
		select {
		case r = <-done: // answered just before exiting
		default:
			return nil, fmt.Errorf("qmp %s: qemu exited", command)
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, r.err)
	}
	ret, err := decodeReturn(r.reply)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	return ret, nil
}

func (c *qmpClient) status(ctx context.Context, exited <-chan struct{}) (string, error) {
	ret, err := c.run(ctx, exited, "query-status")
	if err != nil {
		return "", err
	}
	s, err := decodeStatus(ret)
	if err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return s, nil
}

func (c *qmpClient) cpus(ctx context.Context, exited <-chan struct{}) (int, error) {
	ret, err := c.run(ctx, exited, "query-cpus-fast")
	if err != nil {
		return 0, err
	}
	n, err := decodeCPUs(ret)
	if err != nil {
		return 0, fmt.Errorf("qmp query-cpus-fast: %w", err)
	}
	return n, nil
}

func (c *qmpClient) quit(ctx context.Context, exited <-chan struct{}) error {
	_, err := c.run(ctx, exited, "quit")
	return err
}

// events subscribes to QMP events. The channel must be drained until it
// closes (when the connection ends): go-qemu blocks its reader on it.
func (c *qmpClient) events() <-chan qmp.Event {
	ch, _ := c.mon.Events(context.Background()) // never fails for a socket monitor
	return ch
}

// close drops the connection; go-qemu drains its reader goroutine here.
func (c *qmpClient) close() { _ = c.mon.Disconnect() }

func decodeReturn(reply []byte) (json.RawMessage, error) {
	if len(reply) > maxQMPReply {
		return nil, fmt.Errorf("reply of %d bytes is over the %d byte limit", len(reply), maxQMPReply)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return nil, fmt.Errorf("decode reply: %w", err)
	}
	if len(r.Return) == 0 {
		return nil, errors.New("reply has no return value")
	}
	return r.Return, nil
}

func decodeStatus(ret json.RawMessage) (string, error) {
	var s struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &s); err != nil {
		return "", fmt.Errorf("decode status: %w", err)
	}
	if s.Status == "" {
		return "", errors.New("status is empty")
	}
	return s.Status, nil
}

func decodeCPUs(ret json.RawMessage) (int, error) {
	// Only the count matters; each element must still be an object.
	var cpus []struct {
		CPUIndex int `json:"cpu-index"`
	}
	if err := json.Unmarshal(ret, &cpus); err != nil {
		return 0, fmt.Errorf("decode cpus: %w", err)
	}
	return len(cpus), nil
}

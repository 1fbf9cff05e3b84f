// Package agent is the host side of the agent channel: a gRPC client for
// cloak-agent over whatever byte stream reaches the guest (the virtio-serial
// chardev socket here, vsock on real hosts), and helpers for process stdio.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// Client is a connection to one guest's agent.
type Client struct {
	agentapi.AgentServiceClient
	conn *grpc.ClientConn
}

// Dial returns a client whose connections are made by dial (for example
// qemu.VM.DialAgent). It does not wait for the agent; call Check for that.
//
// The channel carries no TLS: it is a local device between the host and its
// own VM, and the host is outside the trust boundary either way — what the
// guest trusts is checked inside the guest.
func Dial(dial func(ctx context.Context) (net.Conn, error)) (*Client, error) {
	conn, err := grpc.NewClient("passthrough:///cloak-agent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(agentapi.MaxMessageSize),
			grpc.MaxCallSendMsgSize(agentapi.MaxMessageSize),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("agent client: %w", err)
	}
	return &Client{AgentServiceClient: agentapi.NewAgentServiceClient(conn), conn: conn}, nil
}

// Connect returns a client once the agent has answered Check. Its first
// connection is first (typically from qemu.VM.ConnectAgent, already accepted
// by the agent); later reconnects use redial. first is closed on failure.
func Connect(ctx context.Context, first net.Conn, redial func(ctx context.Context) (net.Conn, error)) (*Client, error) {
	var mu sync.Mutex
	c, err := Dial(func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		conn := first
		first = nil
		mu.Unlock()
		if conn != nil {
			return conn, nil
		}
		return redial(ctx)
	})
	if err != nil {
		first.Close()
		return nil, err
	}
	if _, err := c.Check(ctx, &agentapi.CheckRequest{}, grpc.WaitForReady(true)); err != nil {
		c.Close()
		return nil, fmt.Errorf("agent Check: %w", err)
	}
	return c, nil
}

// Close closes the connection; the guest keeps running.
func (c *Client) Close() error { return c.conn.Close() }

// Attach connects a process's stdio: stdin (may be nil) is sent to the
// process, its stdout and stderr are copied to the writers (nil discards)
// until the agent reports end of both streams. Attach before starting the
// process so nothing is lost.
func (c *Client) Attach(ctx context.Context, containerID, execID string, stdin io.Reader, stdout, stderr io.Writer) error {
	stream, err := c.ProcessIO(ctx)
	if err != nil {
		return fmt.Errorf("attach to %s/%s: %w", containerID, execID, err)
	}
	if err := stream.Send(&agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_Attach_{
		Attach: &agentapi.ProcessIORequest_Attach{ContainerId: containerID, ExecId: execID},
	}}); err != nil {
		return fmt.Errorf("attach to %s/%s: %w", containerID, execID, err)
	}
	if stdin != nil {
		go func() {
			buf := make([]byte, agentapi.IOChunkSize)
			for {
				n, err := stdin.Read(buf)
				if n > 0 {
					if stream.Send(&agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}) != nil {
						return
					}
				}
				if err != nil {
					// In the stream: a CloseStdin call could overtake the
					// chunks just sent.
					_ = stream.Send(&agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_CloseStdin{CloseStdin: true}})
					return
				}
			}
		}()
	}
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stdio of %s/%s: %w", containerID, execID, err)
		}
		switch m := msg.Msg.(type) {
		case *agentapi.ProcessIOResponse_Stdout:
			if _, err := stdout.Write(m.Stdout); err != nil {
				return err
			}
		case *agentapi.ProcessIOResponse_Stderr:
			if _, err := stderr.Write(m.Stderr); err != nil {
				return err
			}
		}
	}
}

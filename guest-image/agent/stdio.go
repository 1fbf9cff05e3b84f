package agent

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// processIO is what runc gets for a new process's stdio: pipes, or a socket
// on which runc sends the pty master of a terminal process.
type processIO struct {
	pipes  runc.IO
	socket *runc.Socket
}

func newProcessIO(p *specs.Process) (*processIO, error) {
	if p.Terminal {
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		return &processIO{socket: sock}, nil
	}
	// The pipes belong to the container's user so that it can reopen them
	// (/dev/stdout) after dropping privileges.
	pipes, err := runc.NewPipeIO(int(p.User.UID), int(p.User.GID))
	if err != nil {
		return nil, fmt.Errorf("pipes: %w", err)
	}
	return &processIO{pipes: pipes}, nil
}

// consoleSocket avoids handing go-runc a non-nil interface holding a nil
// *Socket.
func (pio *processIO) consoleSocket() runc.ConsoleSocket {
	if pio.socket == nil {
		return nil
	}
	return pio.socket
}

func (pio *processIO) close() {
	if pio.pipes != nil {
		_ = pio.pipes.Close()
	}
	if pio.socket != nil {
		_ = pio.socket.Close()
	}
}

// process is a container's init or exec process as the host sees it.
type process struct {
	containerID, execID string
	pid                 int

	stdio     *processIO
	console   console.Console // terminal processes only
	stdin     io.WriteCloser
	stdinOnce sync.Once

	exited chan struct{} // closed once exit is set
	exit   runc.Exit

	ioMu     sync.Mutex
	attached bool          // an attachment is running
	streams  []*outStream  // started at the first attachment
	closed   chan struct{} // closed by close(): stops the output pumps
	closing  sync.Once
	outputs  []io.Reader
	kinds    []agentapi.ProcessIOResponse_Stream
}

// outStream carries one output of a process from its pump to the current
// attachment. A chunk that could not be sent waits in pending for the next
// attachment, so a host that reconnects loses nothing.
type outStream struct {
	kind    agentapi.ProcessIOResponse_Stream
	chunks  chan []byte // closed at end of stream
	pending []byte
	done    bool // eof delivered
}

func newProcess(containerID, execID string, pid int, stdio *processIO, exit <-chan runc.Exit) (*process, error) {
	p := &process{containerID: containerID, execID: execID, pid: pid, stdio: stdio, exited: make(chan struct{}), closed: make(chan struct{})}
	if stdio.socket != nil {
		master, err := stdio.socket.ReceiveMaster()
		_ = stdio.socket.Close()
		if err != nil {
			return nil, fmt.Errorf("receive the pty master from runc: %w", err)
		}
		p.console = master
		p.stdin = master
		p.outputs = []io.Reader{master}
		p.kinds = []agentapi.ProcessIOResponse_Stream{agentapi.ProcessIOResponse_STREAM_STDOUT}
	} else {
		p.stdin = stdio.pipes.Stdin()
		p.outputs = []io.Reader{stdio.pipes.Stdout(), stdio.pipes.Stderr()}
		p.kinds = []agentapi.ProcessIOResponse_Stream{agentapi.ProcessIOResponse_STREAM_STDOUT, agentapi.ProcessIOResponse_STREAM_STDERR}
	}
	go func() {
		p.exit = <-exit
		close(p.exited)
	}()
	return p, nil
}

func (p *process) name() string {
	if p.execID == "" {
		return fmt.Sprintf("container %q", p.containerID)
	}
	return fmt.Sprintf("exec %q in container %q", p.execID, p.containerID)
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// close releases the process's stdio; pumps blocked on an absent host end.
func (p *process) close() {
	p.closing.Do(func() {
		close(p.closed)
		if p.console != nil {
			_ = p.console.Close()
		}
		p.stdio.close()
	})
}

// attach claims the process's output for one attachment, starting the
// pumps the first time: output is read only once someone can take it.
func (p *process) attach() ([]*outStream, error) {
	p.ioMu.Lock()
	defer p.ioMu.Unlock()
	if p.attached {
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "%s already has an attached ProcessIO call", p.name())
	}
	if p.streams == nil {
		for i, r := range p.outputs {
			st := &outStream{kind: p.kinds[i], chunks: make(chan []byte)}
			go p.pump(r, st.chunks)
			p.streams = append(p.streams, st)
		}
	}
	open := false
	for _, st := range p.streams {
		open = open || !st.done
	}
	if !open {
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "%s: all output was already delivered", p.name())
	}
	p.attached = true
	return p.streams, nil
}

func (p *process) detach() {
	p.ioMu.Lock()
	p.attached = false
	p.ioMu.Unlock()
}

// pump reads r in chunks of at most IOChunkSize and hands them over one at
// a time: gRPC's flow control on the attachment is what slows the process
// down when the host reads slowly.
func (p *process) pump(r io.Reader, out chan<- []byte) {
	defer close(out)
	for {
		buf := make([]byte, agentapi.IOChunkSize)
		n, err := r.Read(buf)
		if n > 0 {
			select {
			case out <- buf[:n]:
			case <-p.closed:
				return
			}
		}
		// Any error ends the stream: EOF for pipes, EIO for a pty master
		// whose last writer has gone, ErrClosed after RemoveContainer.
		if err != nil {
			return
		}
	}
}

func (p *process) writeStdin(data []byte) error {
	_, err := p.stdin.Write(data)
	return err
}

func (p *process) closeStdin() error {
	if p.console != nil {
		// A terminal has no stdin of its own to close; ^D ends input the
		// way a user at that terminal would.
		_, err := p.console.Write([]byte{4})
		return err
	}
	var err error
	p.stdinOnce.Do(func() { err = p.stdin.Close() })
	return err
}

// ProcessIO attaches to a process's stdio: the first message names the
// process, later ones carry stdin; the agent sends output chunks, one eof
// per stream, then ends the call.
func (s *Server) ProcessIO(stream agentapi.AgentService_ProcessIOServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	att := first.GetAttach()
	if att == nil {
		return invalid("ProcessIO: the first message must be an attach")
	}
	_, p, err := s.lookupProcess(att.GetContainerId(), att.GetExecId())
	if err != nil {
		return err
	}
	streams, err := p.attach()
	if err != nil {
		return err
	}
	defer p.detach()

	// A stdin message the agent policy denies ends the call with the
	// denial (the gate answers it from Recv), so the host learns why.
	denied := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				if status.Code(err) == codes.PermissionDenied {
					denied <- err
				}
				return
			}
			if data := m.GetStdin(); len(data) > 0 {
				if err := p.writeStdin(data); err != nil {
					s.log.Debug("stdin write", "process", p.name(), "err", err)
				}
			}
			if m.GetCloseStdin() {
				if err := p.closeStdin(); err != nil {
					s.log.Debug("stdin close", "process", p.name(), "err", err)
				}
			}
		}
	}()
	return sendOutput(stream, streams, denied)
}

// sendOutput forwards the streams' chunks in order until each has ended.
func sendOutput(stream agentapi.AgentService_ProcessIOServer, streams []*outStream, stop <-chan error) error {
	chunk := func(kind agentapi.ProcessIOResponse_Stream, b []byte) *agentapi.ProcessIOResponse {
		if kind == agentapi.ProcessIOResponse_STREAM_STDERR {
			return &agentapi.ProcessIOResponse{Msg: &agentapi.ProcessIOResponse_Stderr{Stderr: b}}
		}
		return &agentapi.ProcessIOResponse{Msg: &agentapi.ProcessIOResponse_Stdout{Stdout: b}}
	}
	for _, st := range streams {
		if st.pending != nil {
			if err := stream.Send(chunk(st.kind, st.pending)); err != nil {
				return err
			}
			st.pending = nil
		}
	}
	// At most two streams: a nil channel never fires in select, which lets
	// one select serve stdout and stderr (or stdout alone for a terminal).
	var chans [2]chan []byte
	var owners [2]*outStream
	for i, st := range streams {
		if !st.done {
			chans[i], owners[i] = st.chunks, st
		}
	}
	for chans[0] != nil || chans[1] != nil {
		var (
			b  []byte
			ok bool
			i  int
		)
		select {
		case b, ok = <-chans[0]:
			i = 0
		case b, ok = <-chans[1]:
			i = 1
		case <-stream.Context().Done():
			return stream.Context().Err()
		case err := <-stop:
			return err
		}
		st := owners[i]
		if !ok {
			if err := stream.Send(&agentapi.ProcessIOResponse{Msg: &agentapi.ProcessIOResponse_Eof{Eof: st.kind}}); err != nil {
				return err
			}
			st.done = true
			chans[i] = nil
			continue
		}
		if err := stream.Send(chunk(st.kind, b)); err != nil {
			st.pending = b
			return err
		}
	}
	return nil
}

// CloseStdin closes the process's stdin (the host has no more input).
func (s *Server) CloseStdin(_ context.Context, req *agentapi.CloseStdinRequest) (*agentapi.CloseStdinResponse, error) {
	_, p, err := s.lookupProcess(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if err := p.closeStdin(); err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "%s: close stdin: %v", p.name(), err)
	}
	return &agentapi.CloseStdinResponse{}, nil
}

// ResizePty resizes a terminal process's window.
func (s *Server) ResizePty(_ context.Context, req *agentapi.ResizePtyRequest) (*agentapi.ResizePtyResponse, error) {
	if req.GetRows() == 0 || req.GetColumns() == 0 || req.GetRows() > 10000 || req.GetColumns() > 10000 {
		return nil, invalid("pty size %dx%d: want 1-10000 rows and columns", req.GetColumns(), req.GetRows())
	}
	_, p, err := s.lookupProcess(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if p.console == nil {
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "%s has no terminal (process.terminal is false)", p.name())
	}
	if err := p.console.Resize(console.WinSize{Height: uint16(req.GetRows()), Width: uint16(req.GetColumns())}); err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "%s: resize pty: %v", p.name(), err)
	}
	return &agentapi.ResizePtyResponse{}, nil
}

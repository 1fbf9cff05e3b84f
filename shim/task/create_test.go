package task

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/agent"
)

// answerWithin bounds how long a call that must not wait behind a slow
// Create may take: it only takes s.mu for a moment.
const answerWithin = 5 * time.Second

// fakeAgent is a guest agent on a unix socket: real gRPC, no guest. Each
// PullImage runs pull, and each CreateContainer runs create, if set, which
// can hold the call.
type fakeAgent struct {
	agentapi.UnimplementedAgentServiceServer
	pull    func(ctx context.Context, image string) error
	create  func(id string)
	oom     chan string // container ids the "guest" OOM-kills
	removed chan string // RemoveContainer calls
	created atomic.Int32
}

func (a *fakeAgent) PullImage(ctx context.Context, r *agentapi.PullImageRequest) (*agentapi.PullImageResponse, error) {
	if a.pull != nil {
		if err := a.pull(ctx, r.Image); err != nil {
			return nil, err
		}
	}
	return &agentapi.PullImageResponse{}, nil
}

func (a *fakeAgent) CreateContainer(ctx context.Context, r *agentapi.CreateContainerRequest) (*agentapi.CreateContainerResponse, error) {
	if a.create != nil {
		a.create(r.ContainerId)
	}
	return &agentapi.CreateContainerResponse{Pid: 100 + uint32(a.created.Add(1))}, nil
}

func (a *fakeAgent) RemoveContainer(ctx context.Context, r *agentapi.RemoveContainerRequest) (*agentapi.RemoveContainerResponse, error) {
	a.removed <- r.ContainerId
	return &agentapi.RemoveContainerResponse{}, nil
}

func (a *fakeAgent) SignalProcess(ctx context.Context, r *agentapi.SignalProcessRequest) (*agentapi.SignalProcessResponse, error) {
	return &agentapi.SignalProcessResponse{}, nil
}

func (a *fakeAgent) OOMEvents(_ *agentapi.OOMEventsRequest, stream grpc.ServerStreamingServer[agentapi.OOMEvent]) error {
	for {
		select {
		case id := <-a.oom:
			if err := stream.Send(&agentapi.OOMEvent{ContainerId: id}); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

// recorder is containerd's end of the shim's events.
type recorder struct {
	mu     sync.Mutex
	events []events.Event
	got    chan struct{} // signalled on every event
}

func (r *recorder) Publish(_ context.Context, _ string, e events.Event) error {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.got <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) Close() error { return nil }

// waitFor waits until an event matching ok was published.
func (r *recorder) waitFor(t *testing.T, what string, ok func(events.Event) bool) {
	t.Helper()
	deadline := time.After(answerWithin)
	for {
		r.mu.Lock()
		for _, e := range r.events {
			if ok(e) {
				r.mu.Unlock()
				return
			}
		}
		r.mu.Unlock()
		select {
		case <-r.got:
		case <-deadline:
			t.Fatalf("no %s event within %s", what, answerWithin)
		}
	}
}

// fakeVMs stands in for startSandbox: each "VM" is the fake agent behind a
// real gRPC client. gate, when set, holds every boot until it is closed;
// with ignoreCancel the boot does not notice its context (as a QEMU launch
// or agent handshake that runs to its own timeout).
type fakeVMs struct {
	t            *testing.T
	agent        *fakeAgent
	socket       string
	gate         chan struct{}
	ignoreCancel bool
	booting      chan string  // the task id of each boot, as it begins
	boots        atomic.Int32 // calls
	started      atomic.Int32 // VMs returned
	stops        atomic.Int32
}

func (f *fakeVMs) start(ctx context.Context, spec sandboxSpec) (*sandbox, error) {
	f.boots.Add(1)
	f.booting <- spec.id
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			if !f.ignoreCancel {
				return nil, ctx.Err()
			}
			<-f.gate
		}
	}
	client, err := agent.Dial(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", f.socket)
	})
	if err != nil {
		return nil, err
	}
	f.started.Add(1)
	exited := make(chan struct{})
	var once sync.Once
	stop := func(context.Context) error {
		once.Do(func() {
			f.stops.Add(1)
			_ = client.Close()
			close(exited)
		})
		return nil
	}
	return &sandbox{pid: 4242, exited: exited, client: client, undo: []func(context.Context) error{stop}}, nil
}

// running is the number of fake VMs booted and not stopped.
func (f *fakeVMs) running() int32 { return f.started.Load() - f.stops.Load() }

type harness struct {
	t      *testing.T
	s      *service
	vms    *fakeVMs
	agent  *fakeAgent
	events *recorder
	sd     shutdown.Service
	ctx    context.Context
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	a := &fakeAgent{oom: make(chan string, 4), removed: make(chan string, 16)}
	srv := grpc.NewServer()
	agentapi.RegisterAgentServiceServer(srv, a)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	ctx := namespaces.WithNamespace(context.Background(), "test")
	ctx, sd := shutdown.WithShutdown(ctx)
	rec := &recorder{got: make(chan struct{}, 1)}
	ts, err := NewService(ctx, rec, sd)
	if err != nil {
		t.Fatal(err)
	}
	s := ts.(*service)
	vms := &fakeVMs{t: t, agent: a, socket: socket, booting: make(chan string, 8)}
	s.startVM = vms.start
	h := &harness{t: t, s: s, vms: vms, agent: a, events: rec, sd: sd, ctx: ctx}
	t.Cleanup(func() {
		sd.Shutdown()
		select {
		case <-sd.Done():
		case <-time.After(30 * time.Second):
			t.Error("the shim's shutdown did not finish")
		}
		if n := vms.running(); n != 0 {
			t.Errorf("%d fake VMs still running after shutdown", n)
		}
	})
	return h
}

// bundle writes a bundle for task id; kind picks its CRI annotations.
func (h *harness) bundle(id string, kind taskKind) string {
	h.t.Helper()
	ann := map[string]string{AnnotationImage: "registry.test/" + id}
	switch kind {
	case podSandbox:
		ann = map[string]string{annotationContainerType: containerTypeSandbox, annotationSandboxID: id}
	case podContainer:
		ann[annotationContainerType], ann[annotationSandboxID] = containerTypeContainer, "sb"
	}
	raw, err := json.Marshal(map[string]any{"ociVersion": "1.2.0", "process": map[string]any{"args": []string{"sh"}, "cwd": "/"}, "annotations": ann})
	if err != nil {
		h.t.Fatal(err)
	}
	dir := h.t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o600); err != nil {
		h.t.Fatal(err)
	}
	return dir
}

func (h *harness) create(id string, kind taskKind) (*taskAPI.CreateTaskResponse, error) {
	return h.s.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: h.bundle(id, kind)})
}

// createAsync runs Create in the background; the result arrives on the channel.
func (h *harness) createAsync(id string, kind taskKind) <-chan error {
	bundle := h.bundle(id, kind)
	done := make(chan error, 1)
	go func() {
		_, err := h.s.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: bundle})
		done <- err
	}()
	return done
}

// within runs call and fails the test if it does not return in time: it
// would be waiting behind a slow Create.
func within[T any](t *testing.T, what string, call func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := call()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(answerWithin):
		t.Fatalf("%s did not answer within %s: it waits behind the Create in flight", what, answerWithin)
		var zero T
		return zero, nil
	}
}

func wantErr(t *testing.T, what string, err, kind error, text string) {
	t.Helper()
	if err == nil || !errors.Is(errgrpc.ToNative(err), kind) || !strings.Contains(err.Error(), text) {
		t.Fatalf("%s: err %v, want %v containing %q", what, err, kind, text)
	}
}

// The pod's other tasks are served while one of its containers pulls its
// image: State, Kill, Wait and Delete answer, OOM kills are forwarded, and
// the id in flight is reserved.
func TestCreateDoesNotHoldUpOtherTasks(t *testing.T) {
	h := newHarness(t)
	pulling, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	h.agent.pull = func(ctx context.Context, image string) error {
		if image != "registry.test/slow" {
			return nil
		}
		close(pulling)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := h.create("sb", podSandbox); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c0", "c1"} {
		if _, err := h.create(id, podContainer); err != nil {
			t.Fatal(err)
		}
	}
	slow := h.createAsync("slow", podContainer)
	<-pulling

	st, err := within(t, "State of another container", func() (*taskAPI.StateResponse, error) {
		return h.s.State(h.ctx, &taskAPI.StateRequest{ID: "c0"})
	})
	if err != nil || st.Status != apitask.Status_CREATED {
		t.Fatalf("State(c0) = %v, %v; want CREATED", st, err)
	}
	if _, err := within(t, "Kill of another container", func() (any, error) {
		return h.s.Kill(h.ctx, &taskAPI.KillRequest{ID: "c0", Signal: uint32(syscall.SIGTERM)})
	}); err != nil {
		t.Fatalf("Kill(c0): %v", err)
	}
	// Wait finds c1's process and waits for its exit, until its deadline.
	short, cancel := context.WithTimeout(h.ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := within(t, "Wait of another container", func() (*taskAPI.WaitResponse, error) {
		return h.s.Wait(short, &taskAPI.WaitRequest{ID: "c1"})
	}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait(c1) = %v, want its deadline exceeded while c1 has not exited", err)
	}
	// A created task that was never started is deleted as exited.
	if _, err := within(t, "Delete of another container", func() (*taskAPI.DeleteResponse, error) {
		return h.s.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	}); err != nil {
		t.Fatalf("Delete(c1): %v", err)
	}
	if id := <-h.agent.removed; id != "c1" {
		t.Errorf("Delete(c1) removed %q in the guest", id)
	}
	h.agent.oom <- "c0"
	h.events.waitFor(t, "TaskOOM for c0", func(e events.Event) bool {
		oom, ok := e.(*eventstypes.TaskOOM)
		return ok && oom.ContainerID == "c0"
	})

	_, err = within(t, "State of the container being created", func() (*taskAPI.StateResponse, error) {
		return h.s.State(h.ctx, &taskAPI.StateRequest{ID: "slow"})
	})
	wantErr(t, "State(slow) while it is created", err, errdefs.ErrNotFound, "still being created")
	_, err = within(t, "a second Create of the id in flight", func() (*taskAPI.CreateTaskResponse, error) {
		return h.create("slow", podContainer)
	})
	wantErr(t, "second Create(slow)", err, errdefs.ErrAlreadyExists, "slow")

	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("Create(slow): %v", err)
	}
	if st, err := h.s.State(h.ctx, &taskAPI.StateRequest{ID: "slow"}); err != nil || st.Status != apitask.Status_CREATED || st.Pid == 0 {
		t.Fatalf("State(slow) after its Create = %v, %v; want CREATED with the guest's pid", st, err)
	}
}

// While the VM boots, the shim answers for the task that boots it, and a
// second Create of that id or of another VM's task does not boot again.
func TestCreateDuringBoot(t *testing.T) {
	h := newHarness(t)
	h.vms.gate = make(chan struct{})
	first := h.createAsync("t1", standalone)
	<-h.vms.booting

	_, err := within(t, "State of the task whose VM boots", func() (*taskAPI.StateResponse, error) {
		return h.s.State(h.ctx, &taskAPI.StateRequest{ID: "t1"})
	})
	wantErr(t, "State(t1) while it boots", err, errdefs.ErrNotFound, "still being created")
	_, err = within(t, "a concurrent Create of the same id", func() (*taskAPI.CreateTaskResponse, error) {
		return h.create("t1", standalone)
	})
	wantErr(t, "second Create(t1)", err, errdefs.ErrAlreadyExists, "t1")
	// The shim still serves a task: Shutdown must not end it.
	if _, err := within(t, "Shutdown", func() (any, error) { return h.s.Shutdown(h.ctx, &taskAPI.ShutdownRequest{}) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.sd.Done():
		t.Fatal("Shutdown during the boot ended the shim")
	default:
	}
	// Another task wanting its own VM waits for this boot, then is refused.
	other := h.createAsync("t2", standalone)

	close(h.vms.gate)
	if err := <-first; err != nil {
		t.Fatalf("Create(t1): %v", err)
	}
	wantErr(t, "Create(t2) while t1's VM booted", <-other, errdefs.ErrAlreadyExists, "already runs the VM of t1")
	if n := h.vms.boots.Load(); n != 1 {
		t.Errorf("%d VM boots, want 1", n)
	}
	if st, err := h.s.State(h.ctx, &taskAPI.StateRequest{ID: "t1"}); err != nil || st.Status != apitask.Status_CREATED {
		t.Fatalf("State(t1) = %v, %v", st, err)
	}
}

// Delete of a task whose Create is in flight abandons that Create: Delete
// returns once it cleaned up, and the VM it started is stopped, whether the
// Create was booting or pulling.
func TestDeleteAbandonsCreate(t *testing.T) {
	tests := []struct {
		name         string
		ignoreCancel bool // the boot runs on after Delete
		inPull       bool // Delete comes during the pull, the VM up
	}{
		{name: "during a boot that notices", ignoreCancel: false},
		{name: "during a boot that runs on", ignoreCancel: true},
		{name: "during the pull", inPull: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			pulling := make(chan struct{})
			if tt.inPull {
				h.agent.pull = func(ctx context.Context, image string) error {
					close(pulling)
					<-ctx.Done()
					return ctx.Err()
				}
			} else {
				h.vms.gate, h.vms.ignoreCancel = make(chan struct{}), tt.ignoreCancel
			}
			created := h.createAsync("t1", standalone)
			<-h.vms.booting
			if tt.inPull {
				<-pulling
			}
			deleted := make(chan error, 1)
			go func() {
				_, err := h.s.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "t1"})
				deleted <- err
			}()
			if tt.ignoreCancel {
				select {
				case err := <-deleted:
					t.Fatalf("Delete returned (%v) while the abandoned Create's VM was still booting", err)
				case <-time.After(200 * time.Millisecond):
				}
				close(h.vms.gate)
			}
			select {
			case err := <-deleted:
				wantErr(t, "Delete(t1) of a Create in flight", err, errdefs.ErrNotFound, "deleted before its Create returned")
			case <-time.After(answerWithin):
				t.Fatal("Delete of a Create in flight did not return")
			}
			// By the time Delete answered, the Create cleaned up.
			if n := h.vms.running(); n != 0 {
				t.Errorf("%d VMs running after the Delete: the abandoned Create leaked its VM", n)
			}
			if err := <-created; err == nil {
				t.Fatal("the abandoned Create succeeded")
			}
			h.s.mu.Lock()
			left := h.s.sandbox != nil || len(h.s.creating) > 0 || len(h.s.containers) > 0
			h.s.mu.Unlock()
			if left {
				t.Error("the shim still records the abandoned task or its VM")
			}
			// containerd's next call after a failed Create ends the shim.
			if _, err := h.s.Shutdown(h.ctx, &taskAPI.ShutdownRequest{}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-h.sd.Done():
			case <-time.After(answerWithin):
				t.Fatal("Shutdown after the abandoned Create did not end the shim")
			}
		})
	}
}

// Deleting a pod container whose pull is in flight leaves the pod's VM,
// which the sandbox task still uses, running.
func TestDeleteAbandonsPodContainerOnly(t *testing.T) {
	h := newHarness(t)
	pulling := make(chan struct{})
	h.agent.pull = func(ctx context.Context, image string) error {
		close(pulling)
		<-ctx.Done()
		return ctx.Err()
	}
	if _, err := h.create("sb", podSandbox); err != nil {
		t.Fatal(err)
	}
	created := h.createAsync("c1", podContainer)
	<-pulling
	_, err := h.s.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	wantErr(t, "Delete(c1)", err, errdefs.ErrNotFound, "deleted before its Create returned")
	if err := <-created; err == nil {
		t.Fatal("the abandoned Create succeeded")
	}
	if n := h.vms.running(); n != 1 {
		t.Errorf("%d VMs running, want the pod's 1", n)
	}
	if n := len(h.agent.removed); n != 0 {
		t.Errorf("%d RemoveContainer calls for a container the guest never created", n)
	}
	if st, err := h.s.State(h.ctx, &taskAPI.StateRequest{ID: "sb"}); err != nil || st.Status != apitask.Status_CREATED {
		t.Errorf("State(sb) = %v, %v", st, err)
	}
}

// The shim shutting down while a Create boots stops that VM too.
func TestShutdownAbandonsCreate(t *testing.T) {
	h := newHarness(t)
	h.vms.gate, h.vms.ignoreCancel = make(chan struct{}), true
	created := h.createAsync("t1", standalone)
	<-h.vms.booting
	h.sd.Shutdown()
	select {
	case <-h.sd.Done():
		t.Fatal("the shim's shutdown finished while a Create it abandoned still booted")
	case <-time.After(200 * time.Millisecond):
	}
	close(h.vms.gate)
	if err := <-created; err == nil {
		t.Fatal("a Create abandoned by the shim's shutdown succeeded")
	}
	select {
	case <-h.sd.Done():
	case <-time.After(answerWithin):
		t.Fatal("shutdown did not finish")
	}
	if n := h.vms.running(); n != 0 {
		t.Errorf("%d VMs running after the shim shut down", n)
	}
	_, err := h.create("t2", standalone)
	wantErr(t, "Create after shutdown", err, errdefs.ErrUnavailable, "shutting down")
}

// A failed pull stops the VM its Create booted, once; the id is free again.
func TestFailedCreateStopsItsVM(t *testing.T) {
	h := newHarness(t)
	h.agent.pull = func(ctx context.Context, image string) error { return errors.New("registry says no") }
	if _, err := h.create("t1", standalone); err == nil || !strings.Contains(err.Error(), "registry says no") {
		t.Fatalf("Create = %v, want the pull's error", err)
	}
	if b, s := h.vms.boots.Load(), h.vms.stops.Load(); b != 1 || s != 1 {
		t.Errorf("%d boots, %d stops; want 1, 1", b, s)
	}
	h.agent.pull = nil
	if _, err := h.create("t1", standalone); err != nil {
		t.Fatalf("Create again after a failed one: %v", err)
	}
}

// A Delete that comes while the guest creates the container leaves no
// container in the guest: the abandoned Create removes it, even though the
// guest finished creating it after the shim stopped waiting.
func TestDeleteDuringGuestCreate(t *testing.T) {
	h := newHarness(t)
	creating, release := make(chan struct{}), make(chan struct{})
	h.agent.create = func(id string) {
		if id == "c1" {
			close(creating)
			<-release // the guest does not notice the host gave up
		}
	}
	t.Cleanup(func() { close(release) })
	if _, err := h.create("sb", podSandbox); err != nil {
		t.Fatal(err)
	}
	created := h.createAsync("c1", podContainer)
	<-creating
	_, err := within(t, "Delete during the guest create", func() (*taskAPI.DeleteResponse, error) {
		return h.s.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	})
	wantErr(t, "Delete(c1)", err, errdefs.ErrNotFound, "deleted before its Create returned")
	select {
	case id := <-h.agent.removed:
		if id != "c1" {
			t.Errorf("removed %q from the guest, want c1", id)
		}
	default:
		t.Error("the abandoned Create did not remove its container from the guest")
	}
	if err := <-created; err == nil {
		t.Fatal("the abandoned Create succeeded")
	}
	if n := h.vms.running(); n != 1 {
		t.Errorf("%d VMs running, want the pod's 1", n)
	}
}

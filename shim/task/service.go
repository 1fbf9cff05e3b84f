// Package task is Cloak's containerd shim v2 task service: each task's
// processes run in a QEMU guest, driven through the guest agent. The host
// rootfs containerd prepares is ignored: the guest pulls the image itself.
package task

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/agent"
	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/mounts"
)

// vmGoneStatus is the exit status of processes whose VM died under them
// (as if SIGKILLed): non-zero, so containerd and its clients see a failure.
const vmGoneStatus = 128 + uint32(syscall.SIGKILL)

// ioDrainTimeout bounds how long an exit event waits, after the guest
// reported the exit, for the last output bytes to reach containerd's FIFOs.
const ioDrainTimeout = 10 * time.Second

var empty = &emptypb.Empty{}

// service implements containerd's task API for the tasks of one shim.
type service struct {
	ctx       context.Context // the shim's; outlives requests
	ns        string
	publisher shim.Publisher
	shutdown  shutdown.Service
	logger    *slog.Logger

	eventsMu     sync.Mutex
	events       chan any
	eventsClosed bool

	// startVM boots the shim's VM: startSandbox (tests replace it).
	startVM func(context.Context, sandboxSpec) (*sandbox, error)

	mu      sync.Mutex
	sandbox *sandbox
	// podID names the VM: the CRI sandbox id, or the standalone task's id.
	podID string
	// podSysctls are the CRI sandbox's IPC sysctls, set in each container.
	podSysctls map[string]string
	containers map[string]*container
	// creating are the Creates in flight: their ids are reserved, their
	// tasks not the shim's yet.
	creating map[string]*creation
	// booting is closed when the VM start in flight ends (nil: none).
	booting chan struct{}
	// closed: the shim is shutting down and takes no more tasks.
	closed bool
}

type container struct {
	id, bundle, image string
	// podSandbox: CRI's pause container, which is the VM itself.
	podSandbox bool
	init       *process
	execs      map[string]*process
	times      startTimes // for the pod start timeline
}

// NewService returns the task service; the shim library registers it over
// ttrpc. Events go to containerd through publisher in order.
func NewService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) (taskAPI.TTRPCTaskService, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	s := &service{
		ctx: ctx, ns: ns, publisher: publisher, shutdown: sd,
		events:     make(chan any, 128),
		containers: map[string]*container{},
		creating:   map[string]*creation{},
		startVM:    startSandbox,
		// QEMU launcher logs join the shim's log (containerd's log pipe),
		// in its format and at its level.
		logger: slog.New(newLogrusHandler(log.G(ctx))),
	}
	go s.forward()
	sd.RegisterCallback(func(ctx context.Context) error {
		s.abandonAll(ctx)
		s.stopSandbox(ctx)
		s.eventsMu.Lock()
		s.eventsClosed = true
		close(s.events)
		s.eventsMu.Unlock()
		return nil
	})
	return s, nil
}

// RegisterTTRPC is called by the shim library.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

func (s *service) forward() {
	ctx := namespaces.WithNamespace(context.Background(), s.ns)
	for e := range s.events {
		if err := s.publisher.Publish(ctx, runtime.GetTopic(e), e); err != nil {
			log.G(s.ctx).WithError(err).Error("publish event")
		}
	}
	s.publisher.Close()
}

// send queues an event for containerd; after shutdown began, events of
// processes that the stopping VM takes with it are dropped.
func (s *service) send(e events.Event) {
	s.eventsMu.Lock()
	defer s.eventsMu.Unlock()
	if !s.eventsClosed {
		s.events <- e
	}
}

// loadConfig reads the runtime's configuration: containerd passes the
// handler's ConfigPath in the generic runtimeoptions.v1.Options type (CRI:
// `options = { ConfigPath = "..." }` under the runtime handler; ctr:
// --runtime-config-path), as for Kata.
func loadConfig(opts *taskAPI.CreateTaskRequest) (config.Config, error) {
	path := ""
	if opts.Options != nil && opts.Options.GetValue() != nil {
		v, err := typeurl.UnmarshalAny(opts.Options)
		if err != nil {
			return config.Config{}, fmt.Errorf("runtime options: %w", err)
		}
		o, ok := v.(*runtimeoptions.Options)
		if !ok {
			return config.Config{}, fmt.Errorf("runtime options: got %T, want runtimeoptions.v1.Options with ConfigPath", v)
		}
		path = o.ConfigPath
	}
	return config.Load(path)
}

// maxSpecSize bounds config.json as read from the bundle.
const maxSpecSize = 4 << 20

func readSpec(bundle string) ([]byte, *specs.Spec, error) {
	raw, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, nil, fmt.Errorf("read bundle spec: %w", err)
	}
	if len(raw) > maxSpecSize {
		return nil, nil, fmt.Errorf("bundle spec larger than %d bytes", maxSpecSize)
	}
	var spec specs.Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, nil, fmt.Errorf("parse bundle spec: %w", err)
	}
	if spec.Process == nil {
		return nil, nil, fmt.Errorf("bundle spec has no process: %w", errdefs.ErrInvalidArgument)
	}
	return raw, &spec, nil
}

// createPlan is what a Create is to do, read from the request, the
// handler's configuration and the bundle before anything is reserved.
type createPlan struct {
	r     *taskAPI.CreateTaskRequest
	cfg   config.Config
	raw   []byte
	spec  *specs.Spec
	kind  taskKind
	podID string
	image string // "" for the pod sandbox
	// vm is the VM this task would start (nil: a pod container, which
	// runs in its sandbox's VM); podSysctls are the pod's IPC sysctls.
	vm         *sandboxSpec
	podSysctls map[string]string
}

// creation is a Create in flight: its id is reserved, so a second Create
// of it fails and Delete can abandon it, while the slow work (VM boot,
// pull, guest create) runs without s.mu.
type creation struct {
	id     string
	ctx    context.Context // the request's; canceled when abandoned
	cancel context.CancelCauseFunc
	done   chan struct{} // closed once the Create cleaned up
	boots  bool          // this Create starts the shim's VM
	// sb is the VM the task runs in, and podSysctls the pod's, once known.
	sb         *sandbox
	podSysctls map[string]string
}

// Create boots the VM with the pod's sandbox task (or a standalone task),
// and for every other task pulls its image in the guest and creates the
// container there from the bundle's spec. A CRI sandbox (pause) task runs
// nothing in the guest: it stands for the VM. s.mu is held only to reserve
// the id and to publish the task: the shim's other tasks are served while
// the VM boots and the image is pulled.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	p, err := planCreate(ctx, s.ns, s.logger, r)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	c, err := s.reserve(ctx, p)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	var resp *taskAPI.CreateTaskResponse
	if c.boots {
		err = s.bootVM(c, p)
	}
	if err == nil {
		if p.kind == podSandbox {
			resp, err = s.createPodSandbox(c, p)
		} else {
			resp, err = s.createContainer(c, p)
		}
	}
	s.finish(c, err)
	return resp, err
}

// planCreate checks the request and the bundle: everything a Create can
// refuse before it reserves anything or boots a VM.
func planCreate(ctx context.Context, ns string, logger *slog.Logger, r *taskAPI.CreateTaskRequest) (*createPlan, error) {
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("restore from checkpoint: a VM task cannot be checkpointed: %w", errdefs.ErrNotImplemented)
	}
	cfg, err := loadConfig(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	p := &createPlan{r: r, cfg: cfg}
	if p.raw, p.spec, err = readSpec(r.Bundle); err != nil {
		return nil, err
	}
	spec := p.spec
	if spec.Process.Terminal != r.Terminal {
		return nil, fmt.Errorf("terminal %v in the request but %v in the spec: %w", r.Terminal, spec.Process.Terminal, errdefs.ErrInvalidArgument)
	}
	p.kind, p.podID = kindOf(r.ID, spec.Annotations)
	vs, err := vmSettingsFor(cfg, spec.Annotations)
	if err != nil {
		return nil, err
	}
	if p.kind != podSandbox {
		// A mount the guest cannot get is refused before a VM boots for it.
		reason := noShareReason(cfg)
		if _, err := mounts.New(r.ID, spec, mounts.Options{Share: reason == "", NoShareReason: reason}); err != nil {
			return nil, fmt.Errorf("container %s: %w: %w", r.ID, err, errdefs.ErrInvalidArgument)
		}
		if p.image, err = imageRef(ctx, ns, r.ID, spec.Annotations); err != nil {
			return nil, err
		}
	}
	if p.kind == podContainer {
		return p, nil
	}
	hostname := spec.Hostname
	if hostname == "" {
		// A DNS label has at most 63 bytes; CRI's ids have 64.
		hostname = r.ID[:min(len(r.ID), 63)]
	}
	pnet := sandboxNet{NetNS: podNetNS(spec)}
	netSysctls, otherSysctls := splitSysctls(spec)
	if p.kind == podSandbox {
		p.podSysctls = otherSysctls
	}
	if pnet.NetNS != "" {
		pnet.Sysctls = netSysctls
		if pnet.DNSServers, pnet.DNSSearches, err = podDNS(spec); err != nil {
			return nil, err
		}
	}
	p.vm = &sandboxSpec{cfg: cfg, settings: vs, ns: ns, id: r.ID, bundle: r.Bundle, hostname: hostname, net: pnet, logger: logger}
	return p, nil
}

// reserve claims the task's id and, when the shim has no VM yet, the VM's
// start. A Create that finds a start in flight waits for it (a pod's
// containers need its VM). The caller ends the reservation with finish.
func (s *service) reserve(ctx context.Context, p *createPlan) (*creation, error) {
	id := p.r.ID
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("container %s: the shim is shutting down: %w", id, errdefs.ErrUnavailable)
	}
	if _, ok := s.containers[id]; ok || s.creating[id] != nil {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrAlreadyExists)
	}
	cctx, cancel := context.WithCancelCause(ctx)
	c := &creation{id: id, ctx: cctx, cancel: cancel, done: make(chan struct{})}
	s.creating[id] = c
	fail := func(err error) (*creation, error) {
		delete(s.creating, id)
		close(c.done)
		cancel(nil)
		return nil, err
	}
	for s.booting != nil {
		booting := s.booting
		s.mu.Unlock()
		select {
		case <-booting:
		case <-cctx.Done():
		}
		s.mu.Lock()
		if cctx.Err() != nil {
			return fail(context.Cause(cctx))
		}
	}
	switch {
	case p.kind == podContainer && s.sandbox == nil:
		return fail(fmt.Errorf("container %s: its pod sandbox %s has no VM in this shim (create the sandbox first): %w", id, p.podID, errdefs.ErrFailedPrecondition))
	case p.kind != podContainer && s.sandbox != nil:
		return fail(fmt.Errorf("container %s: this shim already runs the VM of %s: %w", id, s.podID, errdefs.ErrAlreadyExists))
	}
	if s.sandbox == nil {
		s.booting = make(chan struct{})
		c.boots = true
	} else {
		c.sb, c.podSysctls = s.sandbox, s.podSysctls
	}
	return c, nil
}

// bootVM starts the shim's VM for c and makes it the shim's. A VM whose
// Create was abandoned while it booted is stopped instead.
func (s *service) bootVM(c *creation, p *createPlan) error {
	sb, err := s.startVM(c.ctx, *p.vm)
	s.mu.Lock()
	close(s.booting)
	s.booting = nil
	if err == nil && c.ctx.Err() == nil {
		s.sandbox, s.podID = sb, p.podID
		if p.kind == podSandbox {
			s.podSysctls = p.podSysctls
		}
		c.sb, c.podSysctls = sb, s.podSysctls
		go s.watchVM(sb)
		go s.forwardOOM(sb)
	}
	s.mu.Unlock()
	if err != nil {
		return errgrpc.ToGRPC(fmt.Errorf("start VM: %w", err))
	}
	if c.sb == nil {
		if err := sb.stop(context.WithoutCancel(c.ctx)); err != nil {
			log.G(c.ctx).WithError(err).Warn("stop the VM of an abandoned create")
		}
		return errgrpc.ToGRPC(context.Cause(c.ctx))
	}
	return nil
}

// createContainer pulls the task's image and creates its container in the
// guest, then publishes the task.
func (s *service) createContainer(c *creation, p *createPlan) (*taskAPI.CreateTaskResponse, error) {
	r, client := p.r, c.sb.client
	pullCtx, cancel := context.WithTimeout(c.ctx, p.cfg.AgentTimeout())
	defer cancel()
	times := startTimes{pullStarted: time.Now()}
	var err error
	times.pull, err = client.PullImage(pullCtx, &agentapi.PullImageRequest{Image: p.image, Registry: registryOptions(p.cfg)})
	if err != nil {
		return nil, fmt.Errorf("pull %s in the guest: %w", p.image, err)
	}
	times.pullDone = time.Now()
	guestRaw, err := guestSpec(p.raw, p.spec, c.podSysctls)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	req, err := containerRequest(p.cfg, c.sb, r.ID, p.image, guestRaw)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	created, err := client.CreateContainer(c.ctx, req)
	if err != nil {
		if c.ctx.Err() != nil {
			// Abandoned during the call: the guest may have made it.
			removeInGuest(c, r.ID)
		}
		return nil, fmt.Errorf("create container %s in the guest: %w", r.ID, err)
	}
	times.created = time.Now()
	times.policyNs = created.GetPolicyNs()
	io, err := openStdio(c.ctx, r.Stdin, r.Stdout, r.Stderr, r.Terminal)
	if err == nil {
		proc := newProcess(r.ID, "", created.Pid, io)
		if err = s.publish(c, r, &container{id: r.ID, bundle: r.Bundle, image: p.image, init: proc, execs: map[string]*process{}, times: times}); err != nil {
			io.closeAll()
		}
	}
	if err != nil {
		removeInGuest(c, r.ID)
		return nil, errgrpc.ToGRPC(err)
	}
	go io.copy(s.ctx, client, r.ID, "")
	return &taskAPI.CreateTaskResponse{Pid: created.Pid}, nil
}

// removeInGuest removes the container of a failed Create from the guest.
func removeInGuest(c *creation, id string) {
	ctx := context.WithoutCancel(c.ctx)
	if _, err := c.sb.client.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		log.G(ctx).WithError(err).WithField("container", id).Warn("remove the container of a failed create in the guest")
	}
}

// createPodSandbox publishes the pod's sandbox task, whose process is the
// VM: its pid is QEMU's, it runs until killed or until the VM stops.
func (s *service) createPodSandbox(c *creation, p *createPlan) (*taskAPI.CreateTaskResponse, error) {
	r := p.r
	io, err := openStdio(c.ctx, r.Stdin, r.Stdout, r.Stderr, r.Terminal)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	// The pause process prints nothing: its output streams end now.
	io.closeAll()
	pid := uint32(c.sb.pid)
	proc := newProcess(r.ID, "", pid, io)
	if err := s.publish(c, r, &container{id: r.ID, bundle: r.Bundle, podSandbox: true, init: proc, execs: map[string]*process{}}); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.CreateTaskResponse{Pid: pid}, nil
}

// publish makes the created task one of the shim's and tells containerd,
// unless its Create was abandoned meanwhile (Delete, shim shutdown).
func (s *service) publish(c *creation, r *taskAPI.CreateTaskRequest, ct *container) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.ctx.Err() != nil {
		return context.Cause(c.ctx)
	}
	delete(s.creating, c.id)
	s.containers[c.id] = ct
	s.sendCreate(r, ct.init.state().pid)
	return nil
}

// finish ends c's reservation. After a failed Create, a VM that no task
// uses or is being created in any more (typically the one this Create
// started) stops.
func (s *service) finish(c *creation, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.creating[c.id] == c {
		delete(s.creating, c.id)
	}
	if err != nil && len(s.containers) == 0 && len(s.creating) == 0 {
		s.stopSandboxLocked(context.WithoutCancel(c.ctx))
	}
	close(c.done)
	c.cancel(nil)
}

// abandon cancels the Create of id in flight, if any, and waits until it
// has cleaned up: the VM it may have started is stopped and nothing of the
// task is left. It reports whether there was one.
func (s *service) abandon(ctx context.Context, id string) (bool, error) {
	s.mu.Lock()
	c := s.creating[id]
	if c != nil {
		c.cancel(fmt.Errorf("container %s: deleted before its Create returned: %w", id, errdefs.ErrAborted))
	}
	s.mu.Unlock()
	if c == nil {
		return false, nil
	}
	select {
	case <-c.done:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

func (s *service) sendCreate(r *taskAPI.CreateTaskRequest, pid uint32) {
	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: pid,
		IO:         &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint: r.Checkpoint,
	})
}

// watchVM ends every process when QEMU exits without being asked to.
func (s *service) watchVM(sb *sandbox) {
	<-sb.exited
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.containers {
		for _, p := range append([]*process{c.init}, values(c.execs)...) {
			if p.exit(vmGoneStatus, time.Now()) {
				log.G(s.ctx).WithField("container", c.id).WithField("exec", p.execID).Warn("VM exited under a running process")
				s.sendExit(p)
			}
		}
	}
}

// forwardOOM turns the guest's OOM kills into TaskOOM events, until the VM
// goes away.
func (s *service) forwardOOM(sb *sandbox) {
	stream, err := sb.client.OOMEvents(s.ctx, &agentapi.OOMEventsRequest{})
	if err != nil {
		log.G(s.ctx).WithError(err).Warn("subscribe to OOM events in the guest")
		return
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return
		}
		s.mu.Lock()
		_, known := s.containers[ev.ContainerId]
		s.mu.Unlock()
		// The guest names containers; only report ones this shim runs.
		if known {
			s.send(&eventstypes.TaskOOM{ContainerID: ev.ContainerId})
		}
	}
}

func values(m map[string]*process) []*process {
	out := make([]*process, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	return out
}

func (s *service) sendExit(p *process) {
	st := p.state()
	s.send(&eventstypes.TaskExit{
		ContainerID: p.containerID, ID: p.eventID(), Pid: st.pid,
		ExitStatus: st.exitStatus, ExitedAt: protobuf.ToTimestamp(st.exitedAt),
	})
}

// find is lookup under s.mu; it also returns the current sandbox.
func (s *service) find(id, execID string) (*container, *process, *sandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, p, err := s.lookup(id, execID)
	return c, p, s.sandbox, err
}

// lookup finds a process; the caller holds s.mu.
func (s *service) lookup(id, execID string) (*container, *process, error) {
	c, ok := s.containers[id]
	if !ok {
		return nil, nil, s.missingLocked(id)
	}
	if execID == "" {
		return c, c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, errgrpc.ToGRPC(fmt.Errorf("exec %s in container %s: %w", execID, id, errdefs.ErrNotFound))
	}
	return c, p, nil
}

// missingLocked is the error for a task id that is not the shim's: none
// such, or one whose Create has not returned yet. The caller holds s.mu.
func (s *service) missingLocked(id string) error {
	if s.creating[id] != nil {
		return errgrpc.ToGRPC(fmt.Errorf("container %s: still being created (the task exists once its Create returned): %w", id, errdefs.ErrNotFound))
	}
	return errgrpc.ToGRPC(fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound))
}

// Start starts the init process (created by Create) or an exec process.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, sb, err := s.find(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if st := p.state(); st.status != apitask.Status_CREATED {
		return nil, errgrpc.ToGRPC(fmt.Errorf("process %s is %s, not created: %w", p.eventID(), st.status, errdefs.ErrFailedPrecondition))
	}
	if c.podSandbox {
		// The VM is up already; it is the sandbox's process.
		p.setRunning()
		pid := p.state().pid
		s.send(&eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
		return &taskAPI.StartResponse{Pid: pid}, nil
	}
	if r.ExecID == "" {
		if _, err := sb.client.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: r.ID}); err != nil {
			return nil, fmt.Errorf("start container %s in the guest: %w", r.ID, err)
		}
		started := time.Now()
		s.mu.Lock()
		podID := s.podID
		s.mu.Unlock()
		logTimeline(ctx, sb, podID, c, started)
	} else {
		resp, err := sb.client.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: r.ID, ExecId: r.ExecID, Process: p.spec})
		if err != nil {
			return nil, fmt.Errorf("exec in container %s in the guest: %w", r.ID, err)
		}
		p.setPid(resp.Pid)
		// Output waits in the process's pipes until we attach.
		go p.io.copy(s.ctx, sb.client, r.ID, r.ExecID)
	}
	p.setRunning()
	go s.waitExit(sb, p)
	pid := p.state().pid
	if r.ExecID == "" {
		s.send(&eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
	} else {
		s.send(&eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	}
	return &taskAPI.StartResponse{Pid: pid}, nil
}

// waitExit records a process's exit once the guest reports it and its
// output has been delivered, then tells containerd.
func (s *service) waitExit(sb *sandbox, p *process) {
	resp, err := sb.client.WaitProcess(s.ctx, &agentapi.WaitProcessRequest{ContainerId: p.containerID, ExecId: p.execID})
	status, at := vmGoneStatus, time.Now()
	if err != nil {
		log.G(s.ctx).WithError(err).WithField("container", p.containerID).Warn("wait for process in the guest")
	} else {
		status, at = uint32(resp.ExitStatus), time.Unix(0, resp.ExitedAtUnixNano)
	}
	select {
	case <-p.io.done:
	case <-sb.exited:
	case <-time.After(ioDrainTimeout):
		// A process the container left behind may hold its output open;
		// the exit must not wait for it forever.
		log.G(s.ctx).WithField("container", p.containerID).WithField("exec", p.execID).
			Warnf("output still open %s after the process exited; reporting the exit", ioDrainTimeout)
	}
	if p.exit(status, at) {
		s.sendExit(p)
	}
}

func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[r.ID]
	if !ok {
		return nil, s.missingLocked(r.ID)
	}
	if c.podSandbox {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec in %s: the pod sandbox is the VM and runs no process in the guest; exec into one of the pod's containers: %w", r.ID, errdefs.ErrNotImplemented))
	}
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %s: %w", r.ExecID, errdefs.ErrAlreadyExists))
	}
	if r.Spec == nil || len(r.Spec.GetValue()) == 0 {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %s: no process spec: %w", r.ExecID, errdefs.ErrInvalidArgument))
	}
	io, err := openStdio(ctx, r.Stdin, r.Stdout, r.Stderr, r.Terminal)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	p := newProcess(r.ID, r.ExecID, 0, io)
	// The spec Any holds the OCI Process as JSON, which the agent takes as is.
	p.spec = r.Spec.GetValue()
	c.execs[r.ExecID] = p
	s.send(&eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return empty, nil
}

func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	client, err := s.client()
	if err != nil {
		return nil, err
	}
	if _, err := client.ResizePty(ctx, &agentapi.ResizePtyRequest{ContainerId: r.ID, ExecId: r.ExecID, Rows: r.Height, Columns: r.Width}); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, _, err := s.find(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st := p.state()
	return &taskAPI.StateResponse{
		ID: p.eventID(), Bundle: c.bundle, Pid: st.pid, Status: st.status,
		Stdin: p.io.stdinPath, Stdout: p.io.stdoutPath, Stderr: p.io.stderrPath, Terminal: p.io.terminal,
		ExitStatus: st.exitStatus, ExitedAt: protobuf.ToTimestamp(st.exitedAt), ExecID: r.ExecID,
	}, nil
}

func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPC(fmt.Errorf("pause: not supported by the cloak runtime yet (the guest agent has no freezer call): %w", errdefs.ErrNotImplemented))
}

func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPC(fmt.Errorf("resume: not supported by the cloak runtime yet (the guest agent has no freezer call): %w", errdefs.ErrNotImplemented))
}

func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint: a confidential VM's memory cannot be dumped by the host, by design: %w", errdefs.ErrNotImplemented))
}

func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	c, p, sb, err := s.find(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	switch p.state().status {
	case apitask.Status_STOPPED:
		return nil, errgrpc.ToGRPC(fmt.Errorf("process %s already finished: %w", p.eventID(), errdefs.ErrNotFound))
	}
	if c.podSandbox {
		s.killPodSandbox(ctx, sb, p, syscall.Signal(r.Signal))
		return empty, nil
	}
	switch p.state().status {
	case apitask.Status_CREATED:
		if r.ExecID != "" {
			// Never started: nothing runs in the guest yet.
			p.exit(128+r.Signal, time.Now())
			p.io.closeAll()
			return empty, nil
		}
	}
	if _, err := sb.client.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: r.ID, ExecId: r.ExecID, Signal: r.Signal, All: r.All}); err != nil {
		// It exited in the guest and its exit is on its way to us: as for
		// runc's shim, a finished process is "not found", which containerd
		// takes as already stopped.
		if agentapi.ReasonOf(err) == agentapi.ReasonNotFound {
			return nil, errgrpc.ToGRPC(fmt.Errorf("process %s already finished in the guest: %w", p.eventID(), errdefs.ErrNotFound))
		}
		return nil, fmt.Errorf("signal %d to %s in the guest: %w", r.Signal, p.eventID(), err)
	}
	return empty, nil
}

// killPodSandbox ends the sandbox's process as a pause process would:
// SIGTERM and SIGINT end it with status 0, SIGKILL with 137, other signals
// are ignored (pause is PID 1 of its namespace). The VM stops with it, and
// every other task of the pod exits 137.
func (s *service) killPodSandbox(ctx context.Context, sb *sandbox, p *process, sig syscall.Signal) {
	var status uint32
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT:
	case syscall.SIGKILL:
		status = vmGoneStatus
	default:
		return
	}
	if !p.exit(status, time.Now()) {
		return
	}
	// Stopped before the exit event: containerd tears the pod network down
	// on it, and QEMU must no longer use the TAPs by then.
	if err := sb.stop(context.WithoutCancel(ctx)); err != nil {
		log.G(ctx).WithError(err).Warn("stop the pod VM")
	}
	s.sendExit(p)
}

func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, p, _, err := s.find(r.ID, "")
	if err != nil {
		return nil, err
	}
	if c.podSandbox {
		return &taskAPI.PidsResponse{Processes: []*apitask.ProcessInfo{{Pid: p.state().pid}}}, nil
	}
	client, err := s.client()
	if err != nil {
		return nil, err
	}
	resp, err := client.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: r.ID})
	if err != nil {
		return nil, err
	}
	out := &taskAPI.PidsResponse{}
	for _, pid := range resp.Pids {
		out.Processes = append(out.Processes, &apitask.ProcessInfo{Pid: pid})
	}
	return out, nil
}

func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, _, err := s.find(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.io.closeStdin()
	}
	return empty, nil
}

// Update passes new resources (OCI LinuxResources, JSON in the Any) to the
// guest, which applies them to the container's cgroup.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, _, _, err := s.find(r.ID, "")
	if err != nil {
		return nil, err
	}
	// The sandbox's resources are the VM's, fixed at boot.
	if r.Resources == nil || c.podSandbox {
		return empty, nil
	}
	client, err := s.client()
	if err != nil {
		return nil, err
	}
	if _, err := client.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: r.ID, Resources: r.Resources.GetValue()}); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, _, err := s.find(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	st := p.state()
	return &taskAPI.WaitResponse{ExitStatus: st.exitStatus, ExitedAt: protobuf.ToTimestamp(st.exitedAt)}, nil
}

// Delete removes an exec process, or the container (and, with the last
// container, the VM). A container whose Create is in flight is abandoned:
// Delete waits until that Create cleaned up (the VM it started stopped)
// and answers not found.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	if r.ExecID == "" {
		if was, err := s.abandon(ctx, r.ID); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: wait for its abandoned Create to clean up: %w", r.ID, err))
		} else if was {
			return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: deleted before its Create returned, which then failed and left nothing behind: %w", r.ID, errdefs.ErrNotFound))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st := p.state()
	if r.ExecID != "" {
		if st.status == apitask.Status_RUNNING {
			return nil, errgrpc.ToGRPC(fmt.Errorf("exec %s is running: %w", r.ExecID, errdefs.ErrFailedPrecondition))
		}
		p.io.closeAll()
		delete(c.execs, r.ExecID)
		return &taskAPI.DeleteResponse{Pid: st.pid, ExitStatus: st.exitStatus, ExitedAt: protobuf.ToTimestamp(st.exitedAt)}, nil
	}
	if st.status == apitask.Status_RUNNING {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s is running: kill it first: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	select {
	case <-s.sandbox.exited:
	default:
		if c.podSandbox {
			break
		}
		if _, err := s.sandbox.client.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: r.ID}); err != nil {
			log.G(ctx).WithError(err).WithField("container", r.ID).Warn("remove container in the guest")
		}
	}
	if err := s.sandbox.share.unbindContainer(r.ID); err != nil {
		log.G(ctx).WithError(err).WithField("container", r.ID).Warn("remove the container's shared mounts")
	}
	// A created-but-never-started task has not exited; it has now.
	if p.exit(0, time.Now()) {
		st = p.state()
	}
	p.io.closeAll()
	for _, e := range c.execs {
		e.exit(vmGoneStatus, time.Now())
		e.io.closeAll()
	}
	delete(s.containers, r.ID)
	if len(s.containers) == 0 && len(s.creating) == 0 {
		s.stopSandboxLocked(ctx)
	}
	s.send(&eventstypes.TaskDelete{ContainerID: r.ID, Pid: st.pid, ExitStatus: st.exitStatus, ExitedAt: protobuf.ToTimestamp(st.exitedAt)})
	return &taskAPI.DeleteResponse{Pid: st.pid, ExitStatus: st.exitStatus, ExitedAt: protobuf.ToTimestamp(st.exitedAt)}, nil
}

// Stats reports the container's cgroup (v2, inside the guest) in the
// metrics type containerd and its clients decode for cgroup v2 hosts.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, _, _, err := s.find(r.ID, "")
	if err != nil {
		return nil, err
	}
	client, err := s.client()
	if err != nil {
		return nil, err
	}
	var m *cgroupstats.Metrics
	if c.podSandbox {
		// The sandbox is the VM: its memory in use is the guest's.
		gs, err := client.GuestStats(ctx, &agentapi.GuestStatsRequest{})
		if err != nil {
			return nil, err
		}
		m = &cgroupstats.Metrics{Memory: &cgroupstats.MemoryStat{
			Usage: gs.MemTotalBytes - min(gs.MemAvailableBytes, gs.MemTotalBytes), UsageLimit: gs.MemTotalBytes,
		}}
	} else {
		st, err := client.StatsContainer(ctx, &agentapi.StatsContainerRequest{ContainerId: r.ID})
		if err != nil {
			return nil, err
		}
		m = metrics(st)
	}
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		return nil, err
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

func metrics(st *agentapi.StatsContainerResponse) *cgroupstats.Metrics {
	return &cgroupstats.Metrics{
		CPU:    &cgroupstats.CPUStat{UsageUsec: st.CpuUsageNs / 1000, UserUsec: st.CpuUserNs / 1000, SystemUsec: st.CpuSystemNs / 1000},
		Memory: &cgroupstats.MemoryStat{Usage: st.MemoryUsageBytes, UsageLimit: st.MemoryLimitBytes, MaxUsage: st.MemoryMaxUsageBytes},
		Pids:   &cgroupstats.PidsStat{Current: st.PidsCurrent, Limit: st.PidsLimit},
	}
}

func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid())}
	s.mu.Lock()
	if c, ok := s.containers[r.ID]; ok {
		resp.TaskPid = c.init.state().pid
	}
	s.mu.Unlock()
	return resp, nil
}

// Shutdown ends the shim once it serves no container and creates none.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers) + len(s.creating)
	s.mu.Unlock()
	if n > 0 {
		return empty, nil
	}
	s.shutdown.Shutdown()
	return empty, nil
}

func (s *service) client() (*agent.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandbox == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("no VM: %w", errdefs.ErrNotFound))
	}
	return s.sandbox.client, nil
}

// abandonAll, as the shim shuts down, refuses new Creates, cancels those in
// flight and waits until they cleaned up, so that no VM starts after the
// shim stopped its own.
func (s *service) abandonAll(ctx context.Context) {
	s.mu.Lock()
	s.closed = true
	pending := make([]*creation, 0, len(s.creating))
	for _, c := range s.creating {
		c.cancel(fmt.Errorf("container %s: the shim shut down before its Create returned: %w", c.id, errdefs.ErrAborted))
		pending = append(pending, c)
	}
	s.mu.Unlock()
	for _, c := range pending {
		select {
		case <-c.done:
		case <-ctx.Done():
			log.G(ctx).WithField("container", c.id).Warn("shim shut down before an abandoned Create cleaned up")
			return
		}
	}
}

func (s *service) stopSandbox(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopSandboxLocked(ctx)
}

func (s *service) stopSandboxLocked(ctx context.Context) {
	if s.sandbox == nil {
		return
	}
	if err := s.sandbox.stop(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("stop VM")
	}
	s.sandbox = nil
}

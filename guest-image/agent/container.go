package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
	"github.com/cloak-containers/cloak/guest-image/pull"
	"github.com/cloak-containers/cloak/guest-image/unseal"
)

// killWait bounds how long RemoveContainer waits for a SIGKILLed container
// to be collected before it deletes the container anyway.
const killWait = 10 * time.Second

// cgroupRoot is where the guest mounts cgroup v2.
const cgroupRoot = "/sys/fs/cgroup"

// container is one runc container with its bundle under StateDir.
type container struct {
	id     string
	bundle string
	runc   *runc.Runc // logs to the bundle, so failures carry runc's reason
	init   *process

	mu      sync.Mutex
	execs   map[string]*process
	started bool
	stopOOM context.CancelFunc

	// cgroupDir is the container's cgroup v2 directory; oomReported counts
	// the OOM kills already published for it (guarded by mu).
	cgroupDir   string
	oomReported int

	// policyName and policyProcess are what the agent policy compares later
	// requests with (gate.go): set once at create.
	policyName    string
	policyProcess map[string]any
}

func (c *container) rootfs() string  { return filepath.Join(c.bundle, "rootfs") }
func (c *container) scratch() string { return filepath.Join(c.bundle, "scratch") }

// CreateContainer creates (but does not start) a container on the pulled
// image, with the host's spec once checked and merged.
func (s *Server) CreateContainer(ctx context.Context, req *agentapi.CreateContainerRequest) (*agentapi.CreateContainerResponse, error) {
	id := req.GetContainerId()
	if err := hostinput.ID("container", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if err := s.readyLocked(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	img, ok := s.images[req.GetImage()]
	if !ok {
		s.mu.Unlock()
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonNotFound, "container %q: image %q was not pulled in this sandbox; call PullImage first", id, hostinput.Truncate(req.GetImage()))
	}
	if _, used := s.containers[id]; used {
		s.mu.Unlock()
		return nil, agentErr(codes.AlreadyExists, agentapi.ReasonAlreadyExists, "container %q already exists", id)
	}
	c := &container{id: id, bundle: filepath.Join(s.cfg.StateDir, "containers", id), execs: map[string]*process{}}
	s.containers[id] = c // reserves the id while runc works; removed on failure
	s.mu.Unlock()

	resp, err := s.createContainer(ctx, c, img, req)
	if err != nil {
		s.cleanupBundle(c)
		s.mu.Lock()
		delete(s.containers, id)
		s.mu.Unlock()
		return nil, err
	}
	recordForPolicy(c, req.GetOciSpec())
	resp.PolicyNs = s.policyTime.Load()
	return resp, nil
}

func (s *Server) createContainer(ctx context.Context, c *container, img *pull.Image, req *agentapi.CreateContainerRequest) (*agentapi.CreateContainerResponse, error) {
	s.mu.Lock()
	sandboxID := s.sandbox.GetSandboxId()
	s.mu.Unlock()
	if err := hostinput.ContainerFiles(req.GetFiles()); err != nil {
		return nil, err
	}
	rules := s.specRules()
	var err error
	if rules.Sources, err = s.mountSources(c, req); err != nil {
		return nil, err
	}
	spec, err := hostinput.ContainerSpec(sandboxID, c.id, req.GetOciSpec(), img.Config, imageUserLookup(img.Rootfs), rules)
	if err != nil {
		return nil, err
	}
	if err := s.unsealEnv(ctx, c.id, spec); err != nil {
		return nil, err
	}
	if err := writeFiles(c.filesDir(), req.GetFiles()); err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: copy files: %v", c.id, err)
	}
	if err := s.makeGuestDirs(req, rules.Sources); err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: guest volumes: %v", c.id, err)
	}
	if err := mountRootfs(c, img.Rootfs); err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: rootfs: %v", c.id, err)
	}
	cfg, err := json.Marshal(spec)
	if err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: encode spec: %v", c.id, err)
	}
	if err := os.WriteFile(filepath.Join(c.bundle, "config.json"), cfg, 0o600); err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: write bundle: %v", c.id, err)
	}
	rc := *s.runc
	rc.Log = filepath.Join(c.bundle, "runc-log.json")
	c.runc = &rc

	stdio, err := newProcessIO(spec.Process)
	if err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: stdio: %v", c.id, err)
	}
	pidFile := filepath.Join(c.bundle, "init.pid")
	watch := s.reaper.Watch()
	err = c.runc.Create(ctx, c.id, c.bundle, &runc.CreateOpts{IO: stdio.pipes, ConsoleSocket: stdio.consoleSocket(), PidFile: pidFile, NoPivot: s.cfg.NoPivotRoot})
	if err != nil {
		watch.Close()
		stdio.close()
		return nil, runcErr(c.runc, fmt.Sprintf("container %q: runc create", c.id), err)
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		watch.Close()
		stdio.close()
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: read init pid: %v", c.id, err)
	}
	p, err := newProcess(c.id, "", pid, stdio, watch.Claim(pid))
	if err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "container %q: %v", c.id, err)
	}
	c.init = p
	if spec.Linux != nil {
		c.cgroupDir = filepath.Join(cgroupRoot, spec.Linux.CgroupsPath)
	}
	oomCtx, stop := context.WithCancel(context.Background())
	c.stopOOM = stop
	go s.watchOOM(oomCtx, c)
	// `runc events` starts asynchronously and misses an OOM kill that comes
	// before it watches; the cgroup's own counter, read when init exits,
	// catches those.
	go func() {
		select {
		case <-p.exited:
			s.noteOOM(c, false)
		case <-oomCtx.Done():
		}
	}()
	s.log.Info("container created", "container", c.id, "pid", pid, "terminal", spec.Process.Terminal)
	return &agentapi.CreateContainerResponse{Pid: uint32(pid)}, nil
}

// mountRootfs mounts the container's rootfs: the image's read-only tree
// under a tmpfs upper layer, so containers never write into the image and
// their writes stay in guest memory.
func mountRootfs(c *container, lower string) error {
	upper, work := filepath.Join(c.scratch(), "upper"), filepath.Join(c.scratch(), "work")
	if err := os.MkdirAll(c.scratch(), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(c.rootfs(), 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", c.scratch(), "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "mode=0700"); err != nil {
		return fmt.Errorf("mount scratch tmpfs: %w", err)
	}
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", c.rootfs(), "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", lower, err)
	}
	return nil
}

// cleanupBundle unmounts and deletes what CreateContainer made. Lazy
// unmounts, because a process that escaped the kill may still hold a mount.
func (s *Server) cleanupBundle(c *container) {
	for _, m := range []string{c.rootfs(), c.scratch()} {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			s.log.Warn("unmount", "container", c.id, "path", m, "err", err)
		}
	}
	if err := os.RemoveAll(c.bundle); err != nil {
		s.log.Warn("remove bundle", "container", c.id, "err", err)
	}
}

// imageUserLookup resolves an image's "user[:group]" against the image's
// /etc/passwd and /etc/group, opened inside the rootfs so that links in the
// image cannot point the agent at guest files.
func imageUserLookup(rootfs string) hostinput.UserLookup {
	return func(spec string) (specs.User, error) {
		root, err := os.OpenRoot(rootfs)
		if err != nil {
			return specs.User{}, err
		}
		defer root.Close()
		// Missing files are fine for numeric users (scratch images).
		passwd, _ := root.Open("etc/passwd")
		group, _ := root.Open("etc/group")
		var pr, gr *os.File
		if passwd != nil {
			defer passwd.Close()
			pr = passwd
		}
		if group != nil {
			defer group.Close()
			gr = group
		}
		u, err := user.GetExecUser(spec, nil, readerOrNil(pr), readerOrNil(gr))
		if err != nil {
			return specs.User{}, err
		}
		out := specs.User{UID: uint32(u.Uid), GID: uint32(u.Gid)}
		for _, g := range u.Sgids {
			out.AdditionalGids = append(out.AdditionalGids, uint32(g))
		}
		return out, nil
	}
}

// readerOrNil avoids handing moby/sys/user a typed nil io.Reader, which it
// would try to read.
func readerOrNil(f *os.File) io.Reader {
	if f == nil {
		return nil
	}
	return f
}

// runcErr turns a runc failure into an agent error carrying runc's own
// reason from its JSON log (its stderr belongs to the container).
func runcErr(r *runc.Runc, what string, err error) error {
	if msg := lastRuncError(r.Log); msg != "" {
		return agentErr(codes.Internal, agentapi.ReasonRuntime, "%s: %s", what, msg)
	}
	return agentErr(codes.Internal, agentapi.ReasonRuntime, "%s: %v", what, err)
}

// lastRuncError returns the last error message in runc's JSON log.
func lastRuncError(logPath string) string {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	last := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var entry struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &entry) == nil && (entry.Level == "error" || entry.Level == "fatal") {
			last = entry.Msg
		}
	}
	return last
}

// lookup returns a container, or the NOT_FOUND error.
func (s *Server) lookup(id string) (*container, error) {
	if err := hostinput.ID("container", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok || c.init == nil {
		return nil, agentErr(codes.NotFound, agentapi.ReasonNotFound, "container %q not found", id)
	}
	return c, nil
}

// lookupProcess returns a container's init (execID "") or exec process.
func (s *Server) lookupProcess(containerID, execID string) (*container, *process, error) {
	c, err := s.lookup(containerID)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	if err := hostinput.ID("exec", execID); err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, agentErr(codes.NotFound, agentapi.ReasonNotFound, "exec %q not found in container %q", execID, containerID)
	}
	return c, p, nil
}

// StartContainer runs the created container's process.
func (s *Server) StartContainer(ctx context.Context, req *agentapi.StartContainerRequest) (*agentapi.StartContainerResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "container %q was already started", c.id)
	}
	if err := c.runc.Start(ctx, c.id); err != nil {
		return nil, runcErr(c.runc, fmt.Sprintf("container %q: runc start", c.id), err)
	}
	c.started = true
	s.log.Info("container started", "container", c.id)
	return &agentapi.StartContainerResponse{}, nil
}

// ExecProcess starts another process in a running container.
func (s *Server) ExecProcess(ctx context.Context, req *agentapi.ExecProcessRequest) (*agentapi.ExecProcessResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if err := hostinput.ID("exec", req.GetExecId()); err != nil {
		return nil, err
	}
	spec, err := hostinput.ExecProcess(c.id, req.GetExecId(), req.GetProcess())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, used := c.execs[req.GetExecId()]; used {
		return nil, agentErr(codes.AlreadyExists, agentapi.ReasonAlreadyExists, "exec %q already exists in container %q", req.GetExecId(), c.id)
	}
	if !c.started || c.init.hasExited() {
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonInvalidRequest, "container %q is not running; exec needs a started container whose init has not exited", c.id)
	}
	stdio, err := newProcessIO(spec)
	if err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "exec %q: stdio: %v", req.GetExecId(), err)
	}
	pidFile := filepath.Join(c.bundle, "exec-"+req.GetExecId()+".pid")
	watch := s.reaper.Watch()
	err = c.runc.Exec(ctx, c.id, *spec, &runc.ExecOpts{IO: stdio.pipes, ConsoleSocket: stdio.consoleSocket(), PidFile: pidFile, Detach: true})
	if err != nil {
		watch.Close()
		stdio.close()
		return nil, runcErr(c.runc, fmt.Sprintf("exec %q in container %q: runc exec", req.GetExecId(), c.id), err)
	}
	pid, err := runc.ReadPidFile(pidFile)
	_ = os.Remove(pidFile)
	if err != nil {
		watch.Close()
		stdio.close()
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "exec %q: read pid: %v", req.GetExecId(), err)
	}
	p, err := newProcess(c.id, req.GetExecId(), pid, stdio, watch.Claim(pid))
	if err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "exec %q: %v", req.GetExecId(), err)
	}
	c.execs[req.GetExecId()] = p
	s.log.Info("exec started", "container", c.id, "exec", req.GetExecId(), "pid", pid)
	return &agentapi.ExecProcessResponse{Pid: uint32(pid)}, nil
}

// SignalProcess signals the init process (through runc, optionally every
// process of the container) or an exec process.
func (s *Server) SignalProcess(ctx context.Context, req *agentapi.SignalProcessRequest) (*agentapi.SignalProcessResponse, error) {
	if req.GetSignal() == 0 || req.GetSignal() > 64 {
		return nil, invalid("signal %d: want 1-64", req.GetSignal())
	}
	c, p, err := s.lookupProcess(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	sig := unix.Signal(req.GetSignal())
	if p == c.init || req.GetAll() {
		if !req.GetAll() && p.hasExited() {
			return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonNotFound, "container %q: init process has exited", c.id)
		}
		if err := c.runc.Kill(ctx, c.id, int(sig), &runc.KillOpts{All: req.GetAll()}); err != nil {
			return nil, runcErr(c.runc, fmt.Sprintf("container %q: runc kill", c.id), err)
		}
		return &agentapi.SignalProcessResponse{}, nil
	}
	// The exit channel is only closed after the reaper collected the PID, so
	// while it is open the PID cannot have been reused.
	if p.hasExited() {
		return nil, agentErr(codes.FailedPrecondition, agentapi.ReasonNotFound, "exec %q in container %q has exited", p.execID, c.id)
	}
	if err := unix.Kill(p.pid, sig); err != nil {
		return nil, agentErr(codes.Internal, agentapi.ReasonRuntime, "exec %q: signal %d: %v", p.execID, sig, err)
	}
	return &agentapi.SignalProcessResponse{}, nil
}

// WaitProcess returns the process's exit status once it has exited.
func (s *Server) WaitProcess(ctx context.Context, req *agentapi.WaitProcessRequest) (*agentapi.WaitProcessResponse, error) {
	_, p, err := s.lookupProcess(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
		return &agentapi.WaitProcessResponse{ExitStatus: int32(p.exit.Status), ExitedAtUnixNano: p.exit.Timestamp.UnixNano()}, nil
	case <-ctx.Done():
		return nil, agentErr(codes.Canceled, agentapi.ReasonInvalidRequest, "wait for %s: %v", p.name(), ctx.Err())
	}
}

// ListProcesses lists the container's PIDs (runc ps).
func (s *Server) ListProcesses(ctx context.Context, req *agentapi.ListProcessesRequest) (*agentapi.ListProcessesResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	pids, err := c.runc.Ps(ctx, c.id)
	if err != nil {
		return nil, runcErr(c.runc, fmt.Sprintf("container %q: runc ps", c.id), err)
	}
	out := make([]uint32, len(pids))
	for i, p := range pids {
		out[i] = uint32(p)
	}
	return &agentapi.ListProcessesResponse{Pids: out}, nil
}

// StatsContainer reports the container's cgroup CPU, memory and pids usage
// (runc events --stats reads cgroup v1 and v2 alike).
func (s *Server) StatsContainer(ctx context.Context, req *agentapi.StatsContainerRequest) (*agentapi.StatsContainerResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	st, err := c.runc.Stats(ctx, c.id)
	if err != nil {
		return nil, runcErr(c.runc, fmt.Sprintf("container %q: runc events --stats", c.id), err)
	}
	return &agentapi.StatsContainerResponse{
		CpuUsageNs:          st.Cpu.Usage.Total,
		CpuUserNs:           st.Cpu.Usage.User,
		CpuSystemNs:         st.Cpu.Usage.Kernel,
		MemoryUsageBytes:    st.Memory.Usage.Usage,
		MemoryLimitBytes:    st.Memory.Usage.Limit,
		MemoryMaxUsageBytes: st.Memory.Usage.Max,
		PidsCurrent:         st.Pids.Current,
		PidsLimit:           st.Pids.Limit,
	}, nil
}

// UpdateContainer changes the container's cgroup limits (runc update).
func (s *Server) UpdateContainer(ctx context.Context, req *agentapi.UpdateContainerRequest) (*agentapi.UpdateContainerResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	res, err := hostinput.LinuxResources(c.id, req.GetResources())
	if err != nil {
		return nil, err
	}
	if err := c.runc.Update(ctx, c.id, res); err != nil {
		return nil, runcErr(c.runc, fmt.Sprintf("container %q: runc update", c.id), err)
	}
	return &agentapi.UpdateContainerResponse{}, nil
}

// RemoveContainer waits up to timeout_ms for the container to exit, kills
// what is left, deletes it and its bundle.
func (s *Server) RemoveContainer(ctx context.Context, req *agentapi.RemoveContainerRequest) (*agentapi.RemoveContainerResponse, error) {
	if _, err := s.lookup(req.GetContainerId()); err != nil {
		return nil, err
	}
	if err := s.removeContainer(ctx, req.GetContainerId(), time.Duration(req.GetTimeoutMs())*time.Millisecond); err != nil {
		return nil, err
	}
	return &agentapi.RemoveContainerResponse{}, nil
}

func (s *Server) removeContainer(ctx context.Context, id string, timeout time.Duration) error {
	s.mu.Lock()
	c, ok := s.containers[id]
	if ok && c.init != nil {
		delete(s.containers, id)
	}
	s.mu.Unlock()
	if !ok || c.init == nil {
		return agentErr(codes.NotFound, agentapi.ReasonNotFound, "container %q not found", id)
	}
	if timeout > 0 {
		select {
		case <-c.init.exited:
		case <-time.After(timeout):
		case <-ctx.Done():
		}
	}
	// The container's own state decides (created, running or stopped), so
	// kill --all regardless and ignore "not running".
	bg := context.WithoutCancel(ctx)
	_ = c.runc.Kill(bg, c.id, int(unix.SIGKILL), &runc.KillOpts{All: true})
	select {
	case <-c.init.exited:
	case <-time.After(killWait):
		s.log.Warn("container init did not exit after SIGKILL", "container", id, "pid", c.init.pid)
	}
	var errs []string
	if err := c.runc.Delete(bg, c.id, &runc.DeleteOpts{Force: true}); err != nil {
		errs = append(errs, runcErr(c.runc, "runc delete", err).Error())
	}
	c.stopOOM()
	c.mu.Lock()
	c.init.close()
	for _, p := range c.execs {
		p.close()
	}
	c.mu.Unlock()
	s.cleanupBundle(c)
	if len(errs) > 0 {
		return agentErr(codes.Internal, agentapi.ReasonRuntime, "remove container %q: %s", id, strings.Join(errs, "; "))
	}
	s.log.Info("container removed", "container", id)
	return nil
}

// unsealEnv replaces the sealed secrets in the container's environment by
// their plaintext, fetched from the KBS by the sandbox's attestation agent
// (guest-image/unseal). It runs after the agent policy allowed the request,
// which saw only the sealed strings; the plaintext exists only in the
// guest: in the bundle's config.json under /run and in the process.
func (s *Server) unsealEnv(ctx context.Context, id string, spec *specs.Spec) error {
	if spec.Process == nil {
		return nil
	}
	s.mu.Lock()
	aa := s.aa
	s.mu.Unlock()
	var r unseal.Resources
	if aa != nil {
		r = aa
	}
	env, changed, err := unseal.Env(ctx, spec.Process.Env, r)
	if err != nil {
		return agentErr(codes.FailedPrecondition, agentapi.ReasonSealedSecret, "container %q: %v", id, err)
	}
	if changed {
		n := 0
		for _, kv := range spec.Process.Env {
			if _, v, _ := strings.Cut(kv, "="); unseal.Is(v) {
				n++
			}
		}
		spec.Process.Env = env
		s.log.Info("sealed secrets unsealed", "container", id, "env", n)
	}
	return nil
}

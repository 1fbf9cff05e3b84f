package task

import (
	"sync"
	"time"

	apitask "github.com/containerd/containerd/api/types/task"
)

// process is a container's init process (execID "") or an exec process.
type process struct {
	containerID, execID string
	spec                []byte // exec only: OCI Process, JSON
	io                  *stdio
	done                chan struct{} // closed on exit

	mu         sync.Mutex
	pid        uint32
	status     apitask.Status
	exitStatus uint32
	exitedAt   time.Time
}

type processState struct {
	pid        uint32
	status     apitask.Status
	exitStatus uint32
	exitedAt   time.Time
}

func newProcess(containerID, execID string, pid uint32, io *stdio) *process {
	return &process{containerID: containerID, execID: execID, pid: pid, io: io, status: apitask.Status_CREATED, done: make(chan struct{})}
}

// eventID names the process in events and errors: the exec id, or the
// container id for the init process.
func (p *process) eventID() string {
	if p.execID != "" {
		return p.execID
	}
	return p.containerID
}

func (p *process) state() processState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return processState{pid: p.pid, status: p.status, exitStatus: p.exitStatus, exitedAt: p.exitedAt}
}

func (p *process) setPid(pid uint32) {
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
}

func (p *process) setRunning() {
	p.mu.Lock()
	if p.status == apitask.Status_CREATED {
		p.status = apitask.Status_RUNNING
	}
	p.mu.Unlock()
}

// exit records the exit status once; it reports whether this call did, so
// that exactly one exit event is sent.
func (p *process) exit(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == apitask.Status_STOPPED {
		return false
	}
	p.status, p.exitStatus, p.exitedAt = apitask.Status_STOPPED, status, at
	close(p.done)
	return true
}

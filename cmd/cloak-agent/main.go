// Command cloak-agent is the guest's PID 1: it sets up the VM (mounts,
// modules, entropy), then serves the agent API (agentapi.AgentService) to
// the host over vsock or virtio-serial. Run by hand (not PID 1) it serves
// the same API on a unix socket, for tests and debugging.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/agent"
	"github.com/cloak-containers/cloak/guest-image/agent/reaper"
	"github.com/cloak-containers/cloak/guest-image/attester"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
	guestinit "github.com/cloak-containers/cloak/guest-image/init"
	"github.com/cloak-containers/cloak/guest-image/netconf"
	"github.com/cloak-containers/cloak/guest-image/pull"
	"github.com/cloak-containers/cloak/guest-image/transport"
	"github.com/cloak-containers/cloak/internal/logging"
	"github.com/cloak-containers/cloak/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getpid() == 1, os.Stdout, os.Stderr))
}

type options struct {
	listen, stateDir, runc string
	applyNetwork, version  bool
	log                    *logging.Options
}

// parseFlags uses the standard flag package: PID 1 has no use for
// subcommands, and a hand-run --help still works.
func parseFlags(args []string, pid1 bool, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("cloak-agent", flag.ContinueOnError)
	// The flag package prints a failure's error and the whole usage to
	// its output; run prints the error and the way to the usage instead.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.listen, "listen", "", "serve on unix:/path.sock instead of the VM's agent channel (required when not PID 1)")
	fs.StringVar(&o.stateDir, "state-dir", "/run/cloak", "directory for bundles, pulled images and runc state")
	fs.StringVar(&o.runc, "runc", "/usr/bin/runc", "OCI runtime binary")
	fs.BoolVar(&o.applyNetwork, "apply-network", pid1, "apply CreateSandbox's hostname, DNS and network to this machine (default only as PID 1)")
	fs.BoolVar(&o.version, "version", false, "print the version (and exit, when not PID 1)")
	// JSON by default: the host reads the agent's lines on the serial console.
	o.log = logging.Flags(fs, logging.JSON)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, `cloak-agent: the Cloak guest agent (PID 1 of a pod VM).

As PID 1 it mounts /proc, /sys, /dev, cgroups, loads modules and serves the
agent API on vsock port %d or the virtio-serial port %q.
By hand: cloak-agent --listen unix:/tmp/agent.sock --state-dir /tmp/cloak

`, agentapi.VsockPort, agentapi.AgentPortName)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
	}
	if err != nil || o.version && !pid1 {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := o.log.Check(); err != nil {
		return o, err
	}
	if o.listen != "" && !strings.HasPrefix(o.listen, "unix:") {
		return o, fmt.Errorf("--listen %q: want unix:/path.sock", o.listen)
	}
	if !pid1 && o.listen == "" {
		return o, errors.New("not running as PID 1: pass --listen unix:/path.sock to serve on a unix socket")
	}
	return o, nil
}

func run(args []string, pid1 bool, stdout, stderr io.Writer) int {
	// As PID 1, stderr is /dev/console (the kernel opens it for init): JSON
	// lines there reach the host's serial console log. This logger says
	// why a bad command line powers the VM off; the flags' replaces it.
	log := slog.New(slog.NewJSONHandler(stderr, nil)).With("component", "cloak-agent")
	o, err := parseFlags(args, pid1, stderr)
	if l, lerr := o.log.New(stderr); err == nil && lerr == nil {
		log = l.With("component", "cloak-agent")
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil && pid1:
		// PID 1 must not exit (the kernel would panic): a fatal error
		// ends the VM instead, after saying why.
		log.Error("bad command line; powering off", "err", err)
		guestinit.PowerOff(log)
	case err != nil:
		fmt.Fprintf(stderr, "cloak-agent: %v\n  run 'cloak-agent --help' for usage\n", err)
		return 2
	case o.version:
		fmt.Fprintln(stdout, "cloak-agent version", version.String())
		if !pid1 {
			return 0
		}
	}
	err = serve(o, pid1, log)
	if pid1 {
		log.Error("agent stopped; powering off", "err", err)
		guestinit.PowerOff(log)
	}
	if err != nil {
		log.Error("agent stopped", "err", err)
		return 1
	}
	return 0
}

func serve(o options, pid1 bool, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if pid1 {
		if err := guestinit.Setup(log); err != nil {
			return fmt.Errorf("guest setup: %w", err)
		}
	}
	lis, err := listen(ctx, o, log)
	if err != nil {
		return err
	}
	var gs *grpc.Server
	var network agent.Network = netconfNetwork{}
	if !o.applyNetwork {
		network = loggedNetwork{log}
	}
	powerOff := func() { gs.Stop() } // gs is set below, before any call
	if pid1 {
		powerOff = func() { guestinit.PowerOff(log) }
	}
	srv := agent.New(agent.Config{
		Log:         log,
		StateDir:    o.stateDir,
		RuncBinary:  o.runc,
		Puller:      guestPuller{},
		Net:         network,
		Attester:    aaStarter{},
		PowerOff:    powerOff,
		NoPivotRoot: rootIsInitramfs(),
	})
	// Every call passes the pod's agent policy first (agent.GRPCOptions).
	gs = grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(agentapi.MaxMessageSize),
		grpc.MaxSendMsgSize(agentapi.MaxMessageSize),
		// Pings find a host that vanished without closing the channel, so
		// its streams end and it can reconnect.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}, agent.GRPCOptions(srv)...)...)
	agentapi.RegisterAgentServiceServer(gs, srv)
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	log.Info("serving", "addr", lis.Addr().String(), "version", version.Version, "commit", version.Commit, "pid1", pid1)
	if err := gs.Serve(lis); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

func listen(ctx context.Context, o options, log *slog.Logger) (net.Listener, error) {
	if o.listen == "" {
		return transport.Listen(ctx, log)
	}
	path := strings.TrimPrefix(o.listen, "unix:")
	_ = os.Remove(path) // a stale socket from an earlier run
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	return lis, nil
}

// The adapters below fit the platform packages' functions to the small
// interfaces the agent consumes.

type guestPuller struct{}

func (guestPuller) Pull(ctx context.Context, image string, opts pull.Options) (*pull.Image, error) {
	return pull.Pull(ctx, image, opts)
}

type netconfNetwork struct{}

func (netconfNetwork) Apply(ctx context.Context, n *hostinput.Network) error {
	return netconf.Apply(ctx, n)
}

// loggedNetwork stands in for netconf off PID 1, where applying the pod's
// network would reconfigure the developer's machine.
type loggedNetwork struct{ log *slog.Logger }

func (l loggedNetwork) Apply(_ context.Context, n *hostinput.Network) error {
	l.log.Info("network configuration not applied (not PID 1; see --apply-network)", "hostname", n.Hostname, "interfaces", len(n.Interfaces))
	return nil
}

type aaStarter struct{}

func (aaStarter) Start(ctx context.Context, initdata []byte, log *slog.Logger) (agent.AttestationAgent, error) {
	a, err := attester.Start(ctx, initdata, log, reaperSpawn)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// reaperSpawn starts cloak-aa through the agent's reaper, which collects
// every child's exit status (a plain exec.Cmd.Wait would lose that race).
func reaperSpawn(c *exec.Cmd) (func() error, error) {
	r := reaper.Default()
	ch, err := r.Start(c)
	if err != nil {
		return nil, err
	}
	return func() error {
		status, err := r.Wait(c, ch)
		if err != nil {
			return err
		}
		if status != 0 {
			return fmt.Errorf("exit status %d", status)
		}
		return nil
	}, nil
}

// rootIsInitramfs reports whether / is the kernel's initramfs (rootfs:
// ramfs or tmpfs), where pivot_root(2) fails with EINVAL.
func rootIsInitramfs() bool {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

package task

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/shim/agent"
	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
	"github.com/cloak-containers/cloak/shim/network"
)

// The guest sees the host's loopback at this address on QEMU's user-mode
// network, where the guest is 10.0.2.15 and QEMU's DNS is 10.0.2.3.
const (
	userNetGateway = "10.0.2.2"
	userNetGuest   = "10.0.2.15/24"
	userNetDNS     = "10.0.2.3"
	// maxManifestSize bounds the guest image's manifest.json.
	maxManifestSize = 1 << 20
	// stateFile, in the bundle, lets `containerd-shim-cloak-v2 delete`
	// find the VM of a shim that was killed.
	stateFile = "cloak-vm.json"
)

// sandbox is one VM and the agent inside it, as the task service uses it
// once the VM's start steps (startSandbox) all ran.
type sandbox struct {
	pid    int             // QEMU's
	exited <-chan struct{} // closed when QEMU is gone
	client *agent.Client
	share  *hostShare // nil: no virtio-fs shared directory
	// undo are the cleanups of the start steps (runCleanups): powering
	// off and removing what the VM used (TAPs, shared directory, vTPM).
	undo []func(context.Context) error
	// tee and times are for the pod start timeline.
	tee   string
	times vmTimes
}

// vmState is what cleanup needs after the shim died.
type vmState struct {
	QEMUPid int    `json:"qemu_pid"`
	RunDir  string `json:"run_dir"`
	NetNS   string `json:"netns,omitempty"`    // the pod netns holding our TAPs
	VTPMDir string `json:"vtpm_dir,omitempty"` // the VM's swtpm state
}

// sandboxNet is the network the VM joins: the pod network namespace (and
// the pod's DNS), or QEMU's user-mode network when NetNS is "".
type sandboxNet struct {
	NetNS       string
	DNSServers  []string
	DNSSearches []string
	// Sysctls are the pod's net.* sysctls, set in the guest.
	Sysctls map[string]string
}

// vmRunDir is a short per-task directory under cfg.RunDir: socket paths must
// stay under 108 bytes whatever the namespace and id.
func vmRunDir(cfg config.Config, ns, id string) string {
	sum := sha256.Sum256([]byte(ns + "/" + id))
	return filepath.Join(cfg.RunDir, hex.EncodeToString(sum[:8]))
}

// imageCmdline reads the kernel command line the image was built with for
// the guest kernel flavour (config.GuestKernel*). Cloak's carries the root
// disk's dm-verity root hash.
func imageCmdline(dir, flavour string) (string, error) {
	f, err := os.Open(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return "", fmt.Errorf("guest image: %w (build it with `make image` and set image_dir)", err)
	}
	defer f.Close()
	var m struct {
		Cmdline string `json:"cmdline"`
		Debian  struct {
			Cmdline string `json:"cmdline"`
		} `json:"debian"`
	}
	if err := json.NewDecoder(io.LimitReader(f, maxManifestSize)).Decode(&m); err != nil {
		return "", fmt.Errorf("guest image %s: manifest.json: %w (rebuild it with `make image`)", dir, err)
	}
	c := m.Cmdline
	if flavour == config.GuestKernelDebian {
		c = m.Debian.Cmdline
	}
	if c == "" {
		return "", fmt.Errorf("guest image %s: manifest.json has no %s kernel command line (an image from an older Cloak: rebuild it with `make image`)", dir, flavour)
	}
	return c, nil
}

// launchConfig is the QEMU configuration of a task's VM: the image's boot
// artifacts and kernel command line for the handler's guest kernel, the VM's
// size and TEE, the agent channel. The launch measurement a KBS expects
// is computed from the same files and command line (TestSNPLaunchIsMeasured).
func launchConfig(cfg config.Config, vs vmSettings, ns, id, console string) (qemu.Config, error) {
	cmdline, err := imageCmdline(cfg.ImageDir, cfg.GuestKernel)
	if err != nil {
		return qemu.Config{}, err
	}
	return qemu.Config{
		Machine: qemu.MachineQ35, Accel: qemu.Accel(cfg.Accel), VCPUs: vs.vcpus, MemoryMiB: vs.memoryMiB,
		Kernel: cfg.Kernel, Initrd: cfg.Initrd, RootDisk: cfg.RootDisk, Firmware: cfg.Firmware, Cmdline: cmdline,
		ConsoleLog: console, RunDir: vmRunDir(cfg, ns, id),
		Agent:   qemu.Agent{Kind: qemu.AgentVirtioSerial},
		Network: qemu.Network{Kind: qemu.NetworkUser},
		TEE:     vs.tee,
		// tee = "emulated": the guest asks the emulated SNP SP on cloak.sp.
		EmulatedSP: cfg.TEE == config.TEEEmulated,
		TPM:        vtpmFor(cfg, ns, id),
	}, nil
}

// sandboxSpec is what a task's VM is started from.
type sandboxSpec struct {
	cfg      config.Config
	settings vmSettings
	ns, id   string // the containerd namespace and the task that starts the VM
	bundle   string // that task's bundle: the console log and the VM state file
	hostname string
	net      sandboxNet
	logger   *slog.Logger
}

// startSandbox boots the VM for a task, waits for its agent and configures
// the sandbox, one named step after the other (sandboxStart.steps). With a
// pod netns the VM's NICs are TAPs in it and the guest gets the pod's
// addresses and routes; without (standalone `ctr run`) it is on QEMU's
// user-mode network. On failure what the steps made is removed.
func startSandbox(ctx context.Context, spec sandboxSpec) (*sandbox, error) {
	st := &sandboxStart{sandboxSpec: spec, sb: &sandbox{tee: teeLabel(spec.cfg)}}
	st.sb.times.requested = time.Now()
	undo, err := runSteps(ctx, st.steps(), spec.logger)
	if err != nil {
		return nil, err
	}
	st.sb.undo = undo
	return st.sb, nil
}

// sandboxStart is the state the start steps of one VM share.
type sandboxStart struct {
	sandboxSpec
	sb      *sandbox
	console string // the guest console log
	qcfg    qemu.Config
	req     *agentapi.CreateSandboxRequest
	pod     *network.Pod // nil on the user-mode network
	vm      *qemu.VM
	sp      *emulatedSP // nil unless tee = "emulated"
	// agentDeadline bounds the agent's coming up and CreateSandbox together.
	agentDeadline time.Time
}

// steps are the VM's start, in order; a step's cleanup runs when a later
// one fails and when the VM stops (sandbox.stop), last step first.
func (st *sandboxStart) steps() []startStep {
	return []startStep{
		{name: "console log", run: st.consoleLog},
		{name: "run dir", run: st.runDir},
		{name: "launch config", run: st.launchConfig},
		{name: "pod network", run: st.podNetwork, cleanup: st.detachPodNetwork},
		{name: "shared directory", run: st.sharedDir, cleanup: func(context.Context) error { return st.sb.share.close() }},
		{name: "qemu", run: st.startQEMU, cleanup: st.stopQEMU, mark: &st.sb.times.qemuStarted},
		{name: "vm state", run: st.recordVM},
		{name: "emulated sp", run: st.emulatedSP, cleanup: func(context.Context) error { st.sp.stop(); return nil }},
		{name: "agent", run: st.connectAgent, cleanup: st.closeAgent, mark: &st.sb.times.agentReady},
		{name: "create sandbox", run: st.createSandbox, mark: &st.sb.times.ready},
	}
}

func (st *sandboxStart) consoleLog(context.Context) error {
	st.console = filepath.Join(st.bundle, "console.log")
	if st.cfg.ConsoleLogDir != "" {
		if err := os.MkdirAll(st.cfg.ConsoleLogDir, 0o750); err != nil {
			return fmt.Errorf("console log dir: %w", err)
		}
		st.console = filepath.Join(st.cfg.ConsoleLogDir, st.ns+"-"+st.id+".log")
	}
	return nil
}

func (st *sandboxStart) runDir(context.Context) error {
	if err := os.MkdirAll(st.cfg.RunDir, 0o700); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	return nil
}

// launchConfig is the VM's QEMU configuration and the guest's sandbox on
// QEMU's user-mode network; podNetwork replaces the network with the pod's.
func (st *sandboxStart) launchConfig(context.Context) error {
	var err error
	if st.qcfg, err = launchConfig(st.cfg, st.settings, st.ns, st.id, st.console); err != nil {
		return err
	}
	st.req = &agentapi.CreateSandboxRequest{
		SandboxId: st.id, Hostname: st.hostname, Initdata: st.settings.initdata,
		DnsServers: []string{userNetDNS},
		Interfaces: []*agentapi.Interface{{Name: "eth0", Addresses: []string{userNetGuest}}},
		Routes:     []*agentapi.Route{{Destination: "default", Gateway: userNetGateway, Device: "eth0"}},
	}
	return nil
}

func (st *sandboxStart) podNetwork(ctx context.Context) error {
	if st.net.NetNS == "" {
		return nil
	}
	// Recorded before the TAPs exist: a shim killed from here on leaves
	// them to `containerd-shim-cloak-v2 delete`.
	if err := writeVMState(st.bundle, vmState{RunDir: st.qcfg.RunDir, NetNS: st.net.NetNS, VTPMDir: st.qcfg.TPM.StateDir}); err != nil {
		return err
	}
	var err error
	if st.pod, err = network.Attach(ctx, st.net.NetNS, st.logger); err != nil {
		return err
	}
	st.qcfg.Network = qemu.Network{Kind: qemu.NetworkTAP}
	for _, t := range st.pod.TAPs() {
		st.qcfg.Network.TAPs = append(st.qcfg.Network.TAPs, qemu.TAPDevice{File: t.File, MAC: t.MAC})
	}
	st.req.DnsServers, st.req.DnsSearches = st.net.DNSServers, st.net.DNSSearches
	st.req.Sysctls = st.net.Sysctls
	st.req.Interfaces, st.req.Routes = st.pod.Interfaces(), st.pod.Routes()
	return nil
}

// detachPodNetwork removes the TAPs, after QEMU (which holds them) is gone.
func (st *sandboxStart) detachPodNetwork(ctx context.Context) error {
	if st.pod == nil {
		return nil
	}
	return st.pod.Detach(ctx)
}

func (st *sandboxStart) sharedDir(context.Context) error {
	var err error
	st.sb.share, err = startShare(st.cfg, &st.qcfg, st.req)
	return err
}

// startQEMU launches the VM (and its swtpm, virtiofsd). qemu.Start cleans
// up after itself but leaves the vTPM state swtpm_setup made.
func (st *sandboxStart) startQEMU(ctx context.Context) error {
	var err error
	if st.vm, err = qemu.Start(ctx, st.qcfg, st.logger); err != nil {
		if dir := st.qcfg.TPM.StateDir; dir != "" {
			err = errors.Join(err, os.RemoveAll(dir))
		}
		return err
	}
	st.sb.pid, st.sb.exited = st.vm.Pid(), st.vm.Exited()
	return nil
}

// stopQEMU powers the VM off and removes its run directory and its vTPM
// state (the launcher stopped swtpm with QEMU; the state is this VM's).
func (st *sandboxStart) stopQEMU(ctx context.Context) error {
	err := st.vm.Stop(ctx)
	if dir := st.qcfg.TPM.StateDir; dir != "" {
		err = errors.Join(err, os.RemoveAll(dir))
	}
	return err
}

func (st *sandboxStart) recordVM(context.Context) error {
	return writeVMState(st.bundle, vmState{QEMUPid: st.vm.Pid(), RunDir: st.qcfg.RunDir, NetNS: st.net.NetNS, VTPMDir: st.qcfg.TPM.StateDir})
}

// emulatedSP serves the emulated secure processor (or TDX quoting service)
// of tee = "emulated" on the VM's cloak.sp port.
func (st *sandboxStart) emulatedSP(context.Context) error {
	if !st.qcfg.EmulatedSP {
		return nil
	}
	sp, err := startEmulatedSP(st.cfg, st.qcfg, st.settings.initdata, st.logger)
	if err != nil {
		return err
	}
	st.sp = sp
	if st.cfg.EmulatedHostAttack == config.AttackInitdataAfterLaunch {
		// The launch binds the pod's initdata; the guest now gets
		// another one, as from a host that changed its mind.
		st.req.Initdata = changedInitdata(st.settings.initdata)
		st.logger.Warn("emulated host attack: handing the guest an initdata other than the launched one", "attack", st.cfg.EmulatedHostAttack)
	}
	return nil
}

func (st *sandboxStart) connectAgent(ctx context.Context) error {
	st.agentDeadline = time.Now().Add(st.cfg.AgentTimeout())
	ctx, cancel := context.WithDeadline(ctx, st.agentDeadline)
	defer cancel()
	conn, err := st.vm.ConnectAgent(ctx)
	if err != nil {
		return fmt.Errorf("guest agent did not come up (guest console: %s): %w", st.console, err)
	}
	if st.sb.client, err = agent.Connect(ctx, conn, st.vm.DialAgent); err != nil {
		return fmt.Errorf("guest agent: %w", err)
	}
	return nil
}

// closeAgent drops the agent connection; the guest keeps running until
// QEMU stops. A second stop (after a pod sandbox's SIGKILL) closes again.
func (st *sandboxStart) closeAgent(context.Context) error {
	_ = st.sb.client.Close()
	return nil
}

func (st *sandboxStart) createSandbox(ctx context.Context) error {
	ctx, cancel := context.WithDeadline(ctx, st.agentDeadline)
	defer cancel()
	if _, err := st.sb.client.CreateSandbox(ctx, st.req); err != nil {
		return fmt.Errorf("create sandbox in guest: %w", err)
	}
	return nil
}

// changedInitdata is initdata with one more TOML comment: the same settings,
// another digest (emulated_host_attack = "initdata-after-launch").
func changedInitdata(initdata []byte) []byte {
	return append(slices.Clone(initdata), "\n# changed by the host after launch\n"...)
}

// vtpmFor is the VM's software TPM when the handler has vtpm = true: a
// state of its own under vtpm_state_dir, made by swtpm_setup at start (an
// EK certified by the configured local CA) and removed with the VM.
func vtpmFor(cfg config.Config, ns, id string) qemu.VTPM {
	if !cfg.VTPM {
		return qemu.VTPM{}
	}
	return qemu.VTPM{StateDir: filepath.Join(cfg.VTPMStateDir, filepath.Base(vmRunDir(cfg, ns, id))), SetupConfig: cfg.VTPMSetupConfig}
}

// registryOptions turns the config's registry section into the agent's.
func registryOptions(cfg config.Config) *agentapi.RegistryOptions {
	return &agentapi.RegistryOptions{InsecureRegistries: cfg.Registry.Insecure, Mirrors: cfg.Registry.Mirrors}
}

// writeVMState records st in the bundle for cleanupVM.
func writeVMState(bundle string, st vmState) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, stateFile), raw, 0o600); err != nil {
		return fmt.Errorf("vm state: %w", err)
	}
	return nil
}

// stop powers the VM off and removes what it used: the cleanups of its
// start steps, last step first (the agent connection, the emulated SP, QEMU
// and its run directory and vTPM state, the shared directory, then the TAPs
// QEMU held).
func (sb *sandbox) stop(ctx context.Context) error {
	return runCleanups(ctx, sb.undo)
}

// cleanupVM removes the VM recorded in bundle by a shim that is gone: kills
// QEMU (only if that pid still is QEMU for this run dir: pids get reused),
// removes the run directory, the TAPs in the pod netns and the state file.
func cleanupVM(bundle string) error {
	raw, err := os.ReadFile(filepath.Join(bundle, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm state: %w", err)
	}
	var st vmState
	if err := json.Unmarshal(raw, &st); err != nil || st.RunDir == "" || !filepath.IsAbs(st.RunDir) {
		return fmt.Errorf("vm state %s: unreadable (%v)", filepath.Join(bundle, stateFile), err)
	}
	if st.QEMUPid > 0 && isQEMUFor(st.QEMUPid, st.RunDir) {
		if err := syscall.Kill(st.QEMUPid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill qemu %d: %w", st.QEMUPid, err)
		}
		waitGone(st.QEMUPid, 10*time.Second)
	}
	if err := cleanupShare(shareDir(st.RunDir)); err != nil {
		return err
	}
	if err := os.RemoveAll(st.RunDir); err != nil {
		return fmt.Errorf("remove vm run dir: %w", err)
	}
	// swtpm ends (--terminate) when the QEMU it served is gone.
	if st.VTPMDir != "" && filepath.IsAbs(st.VTPMDir) {
		if err := os.RemoveAll(st.VTPMDir); err != nil {
			return fmt.Errorf("remove vm vTPM state: %w", err)
		}
	}
	// A netns that is gone (CNI DEL already removed it) took the TAPs along.
	if st.NetNS != "" {
		if err := network.Cleanup(st.NetNS); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return os.Remove(filepath.Join(bundle, stateFile))
}

// isQEMUFor reports whether pid's command line names runDir's QMP socket.
func isQEMUFor(pid int, runDir string) bool {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	return strings.Contains(string(raw), filepath.Join(runDir, "qmp.sock"))
}

// waitGone polls until pid no longer exists (it is not our child: after the
// shim died, QEMU was reparented and someone else reaps it).
func waitGone(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err == nil && strings.Contains(string(raw), ") Z ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

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

	"github.com/cloak-containers/cloak/agentapi"
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

// sandbox is one VM, the agent inside it and, for a pod, the TAPs that
// connect it to the pod network.
type sandbox struct {
	vm     *qemu.VM
	client *agent.Client
	pod    *network.Pod // nil on the user-mode network
	share  *hostShare   // nil: no virtio-fs shared directory
	// vtpmDir is the VM's swtpm state, removed with the VM ("" = no vTPM).
	vtpmDir string
	sp      *emulatedSP // nil unless tee = "emulated"
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

// startSandbox boots the VM for a task, waits for its agent and configures
// the sandbox. With a pod netns the VM's NICs are TAPs in it and the guest
// gets the pod's addresses and routes; without (standalone `ctr run`) it is
// on QEMU's user-mode network.
func startSandbox(ctx context.Context, cfg config.Config, vs vmSettings, ns, id, bundle, hostname string, pnet sandboxNet, logger *slog.Logger) (_ *sandbox, retErr error) {
	times := vmTimes{requested: time.Now()}
	console := filepath.Join(bundle, "console.log")
	if cfg.ConsoleLogDir != "" {
		if err := os.MkdirAll(cfg.ConsoleLogDir, 0o750); err != nil {
			return nil, fmt.Errorf("console log dir: %w", err)
		}
		console = filepath.Join(cfg.ConsoleLogDir, ns+"-"+id+".log")
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	qcfg, err := launchConfig(cfg, vs, ns, id, console)
	if err != nil {
		return nil, err
	}
	sandboxReq := &agentapi.CreateSandboxRequest{
		SandboxId: id, Hostname: hostname, Initdata: vs.initdata,
		DnsServers: []string{userNetDNS},
		Interfaces: []*agentapi.Interface{{Name: "eth0", Addresses: []string{userNetGuest}}},
		Routes:     []*agentapi.Route{{Destination: "default", Gateway: userNetGateway, Device: "eth0"}},
	}
	sb := &sandbox{tee: teeLabel(cfg)}
	defer func() {
		if retErr != nil {
			sb.stop(context.WithoutCancel(ctx))
		}
	}()
	if pnet.NetNS != "" {
		// Recorded before the TAPs exist: a shim killed from here on
		// leaves them to `containerd-shim-cloak-v2 delete`.
		if err := writeVMState(bundle, vmState{RunDir: qcfg.RunDir, NetNS: pnet.NetNS, VTPMDir: qcfg.TPM.StateDir}); err != nil {
			return nil, err
		}
		if sb.pod, err = network.Attach(ctx, pnet.NetNS, logger); err != nil {
			return nil, err
		}
		qcfg.Network = qemu.Network{Kind: qemu.NetworkTAP}
		for _, t := range sb.pod.TAPs() {
			qcfg.Network.TAPs = append(qcfg.Network.TAPs, qemu.TAPDevice{File: t.File, MAC: t.MAC})
		}
		sandboxReq.DnsServers, sandboxReq.DnsSearches = pnet.DNSServers, pnet.DNSSearches
		sandboxReq.Sysctls = pnet.Sysctls
		sandboxReq.Interfaces, sandboxReq.Routes = sb.pod.Interfaces(), sb.pod.Routes()
	}
	if sb.share, err = startShare(cfg, &qcfg, sandboxReq); err != nil {
		return nil, err
	}
	sb.vtpmDir = qcfg.TPM.StateDir
	if sb.vm, err = qemu.Start(ctx, qcfg, logger); err != nil {
		return nil, err
	}
	times.qemuStarted = time.Now()
	if err := writeVMState(bundle, vmState{QEMUPid: sb.vm.Pid(), RunDir: qcfg.RunDir, NetNS: pnet.NetNS, VTPMDir: qcfg.TPM.StateDir}); err != nil {
		return nil, err
	}
	if qcfg.EmulatedSP {
		if sb.sp, err = startEmulatedSP(cfg, qcfg, vs.initdata, logger); err != nil {
			return nil, err
		}
		if cfg.EmulatedHostAttack == config.AttackInitdataAfterLaunch {
			// The launch binds the pod's initdata; the guest now gets
			// another one, as from a host that changed its mind.
			sandboxReq.Initdata = changedInitdata(vs.initdata)
			logger.Warn("emulated host attack: handing the guest an initdata other than the launched one", "attack", cfg.EmulatedHostAttack)
		}
	}
	vm := sb.vm

	ctx, cancel := context.WithTimeout(ctx, cfg.AgentTimeout())
	defer cancel()
	conn, err := vm.ConnectAgent(ctx)
	if err != nil {
		return nil, fmt.Errorf("guest agent did not come up (guest console: %s): %w", console, err)
	}
	sb.client, err = agent.Connect(ctx, conn, vm.DialAgent)
	if err != nil {
		return nil, fmt.Errorf("guest agent: %w", err)
	}
	times.agentReady = time.Now()
	if _, err := sb.client.CreateSandbox(ctx, sandboxReq); err != nil {
		return nil, fmt.Errorf("create sandbox in guest: %w", err)
	}
	times.ready = time.Now()
	sb.times = times
	return sb, nil
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

// stop powers the VM off, removes its run directory and then the TAPs
// (after QEMU, which holds them, is gone).
func (sb *sandbox) stop(ctx context.Context) error {
	if sb.client != nil {
		sb.client.Close()
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var errs []error
	if sb.vm != nil {
		errs = append(errs, sb.vm.Stop(ctx))
	}
	sb.sp.stop()
	errs = append(errs, sb.share.close())
	if sb.vtpmDir != "" {
		// The launcher stopped swtpm with QEMU; the state is this VM's.
		errs = append(errs, os.RemoveAll(sb.vtpmDir))
	}
	if sb.pod != nil {
		errs = append(errs, sb.pod.Detach(ctx))
	}
	return errors.Join(errs...)
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

// Package attester starts the guest's attestation agent (cloak-aa) from the
// pod's initdata: it reads the KBS address and certificate from the
// initdata's aa.toml, runs `cloak-aa serve`, and hands out the socket where
// cloak-aa serves the ocicrypt keyprovider that image pulls use. Before
// that, the guest's TEE must bind the initdata: an SEV-SNP report's
// HOST_DATA is checked here; on a guest with a vTPM and no SNP/TDX, PCR 8 is
// extended with the initdata digest once per boot (the KBS checks it) and
// cloak-aa attests with --tee tpm.
package attester

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cloak-containers/cloak/api/attestationv1"
	"github.com/cloak-containers/cloak/attestation-agent/evidence/snp"
)

const (
	defaultBinary = "/usr/bin/cloak-aa"
	defaultRunDir = "/run/cloak-aa"
	// readyTimeout bounds cloak-aa's start; it only opens a socket (no KBS
	// call happens before the first key request).
	readyTimeout = 10 * time.Second
	stopTimeout  = 5 * time.Second
	stderrTail   = 4 << 10
)

// Agent is a running cloak-aa.
type Agent struct {
	cmd    *exec.Cmd
	socket string
	tee    string // what cloak-aa attests with: snp, tdx, tpm or "" (its own detection)
	stderr *tail
	done   chan struct{} // closed when the process has been waited for
	err    error         // its exit status, valid after done
	stop   sync.Once
}

// config says where cloak-aa is and where it keeps its files; tests point
// them elsewhere.
type config struct {
	binary, runDir string
	spawn          Spawner
	snp            snp.Paths // where to look for an SEV-SNP report source
	// tpmDevice and tdxDevice: where to look for a TPM and a TDX guest
	// ("": /dev/tpmrm0, /dev/tdx_guest); openTPM opens the TPM (nil: the
	// attestation agent's TPM provider).
	tpmDevice, tdxDevice string
	openTPM              func(dev string) (tpmExtender, error)
}

// Spawner starts a command and returns how to wait for it. In the guest,
// cloak-agent is PID 1 and reaps every child itself, so it passes a spawner
// that waits through its reaper; exec.Cmd.Wait would race with it.
type Spawner func(*exec.Cmd) (wait func() error, err error)

// PlainSpawn starts a command with exec.Cmd.Start and waits with Wait.
func PlainSpawn(c *exec.Cmd) (func() error, error) {
	if err := c.Start(); err != nil {
		return nil, err
	}
	return c.Wait, nil
}

// Start parses initdata, writes it and the KBS certificate to
// /run/cloak-aa/, starts /usr/bin/cloak-aa serve with spawn (nil:
// PlainSpawn) and waits until its socket accepts connections.
func Start(ctx context.Context, initdata []byte, log *slog.Logger, spawn Spawner) (*Agent, error) {
	return start(ctx, initdata, log, config{binary: defaultBinary, runDir: defaultRunDir, spawn: spawn})
}

func start(ctx context.Context, initdata []byte, log *slog.Logger, cfg config) (*Agent, error) {
	doc, err := ParseInitdata(initdata)
	if err != nil {
		return nil, err
	}
	// Nothing in initdata is used before the TEE says the host launched
	// the guest with exactly this document (SNP), or before the TPM binds
	// its digest into every quote the KBS will check (vTPM).
	tee, err := checkBinding(ctx, initdata, cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.runDir, 0o700); err != nil {
		return nil, fmt.Errorf("attestation agent run directory: %w", err)
	}
	initdataFile := filepath.Join(cfg.runDir, "initdata.toml")
	socket := filepath.Join(cfg.runDir, "aa.sock")
	// The exact bytes: their digest is what the TEE report binds.
	if err := os.WriteFile(initdataFile, initdata, 0o600); err != nil {
		return nil, fmt.Errorf("write initdata: %w", err)
	}
	args := []string{"serve", "--kbs", doc.KBS.URL, "--initdata", initdataFile, "--socket", socket}
	if tee != "" {
		args = append(args, "--tee", tee)
	}
	if doc.KBS.Cert != "" {
		certFile := filepath.Join(cfg.runDir, "kbs-cert.pem")
		if err := os.WriteFile(certFile, []byte(doc.KBS.Cert), 0o600); err != nil {
			return nil, fmt.Errorf("write KBS certificate: %w", err)
		}
		args = append(args, "--kbs-cert", certFile)
	}
	// A socket left by an earlier run would look ready at once.
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}

	a := &Agent{socket: socket, tee: tee, stderr: &tail{max: stderrTail}, done: make(chan struct{})}
	// Not CommandContext: the agent outlives the request that starts it.
	a.cmd = exec.Command(cfg.binary, args...)
	a.cmd.Stdout = a.stderr
	a.cmd.Stderr = a.stderr
	spawn := cfg.spawn
	if spawn == nil {
		spawn = PlainSpawn
	}
	wait, err := spawn(a.cmd)
	if err != nil {
		return nil, fmt.Errorf("start attestation agent %s: %w", cfg.binary, err)
	}
	log.Info("attestation agent started", "pid", a.cmd.Process.Pid, "kbs", doc.KBS.URL, "socket", socket)
	go func() {
		a.err = wait()
		close(a.done)
	}()
	if err := a.waitReady(ctx); err != nil {
		a.Stop()
		return nil, err
	}
	return a, nil
}

func (a *Agent) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var d net.Dialer
		if c, err := d.DialContext(ctx, "unix", a.socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-a.done:
			return fmt.Errorf("attestation agent exited before serving (%v): %s", a.err, a.stderr.String())
		case <-ctx.Done():
			return fmt.Errorf("attestation agent did not open %s within %s: %s", a.socket, readyTimeout, a.stderr.String())
		case <-tick.C:
		}
	}
}

// KeyProviderSocket is the unix socket path of cloak-aa's ocicrypt
// keyprovider (pull.Options.KeyProviderSocket).
func (a *Agent) KeyProviderSocket() string { return a.socket }

// GetResource fetches a KBS resource ("kbs:///repository/type/tag") through
// cloak-aa's local API on its socket: cloak-aa attests if it has no valid
// token and decrypts the KBS's answer with its TEE key.
func (a *Agent) GetResource(ctx context.Context, uri string) ([]byte, error) {
	conn, err := grpc.NewClient("unix://"+a.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("attestation agent at %s: %w", a.socket, err)
	}
	defer conn.Close()
	res, err := attestationv1.NewAttestationAgentClient(conn).GetResource(ctx, &attestationv1.GetResourceRequest{Path: uri})
	if err != nil {
		return nil, err
	}
	return res.GetResource(), nil
}

// TEE is the TEE whose report bound the initdata: snp or tdx (hardware or
// emulated), tpm, or "" when none did.
func (a *Agent) TEE() string { return a.tee }

// Stop sends SIGTERM, waits for cloak-aa to exit (SIGKILL after 5 s) and
// reports how it ended; a clean exit on SIGTERM is no error.
func (a *Agent) Stop() error {
	a.stop.Do(func() {
		select {
		case <-a.done:
			return
		default:
		}
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(stopTimeout):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
	})
	<-a.done
	var exit *exec.ExitError
	if a.err == nil || errors.As(a.err, &exit) && exit.ExitCode() == 0 {
		return nil
	}
	if errors.As(a.err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return fmt.Errorf("attestation agent: %v: %s", a.err, a.stderr.String())
}

// tail keeps the last bytes written to it, for error messages.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = t.buf[over:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.buf))
	if s == "" {
		return "(no output)"
	}
	return s
}

package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/api/kbstypes/sealed"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
	"github.com/cloak-containers/cloak/guest-image/pull"
)

const (
	busyboxRef = "registry.test/busybox:1"
	deniedRef  = "registry.test/secret:1"
)

// fakePuller serves the busybox rootfs for busyboxRef and the KBS's refusal
// for deniedRef.
type fakePuller struct {
	mu      sync.Mutex
	keySock string
}

func (f *fakePuller) Pull(_ context.Context, image string, opts pull.Options) (*pull.Image, error) {
	f.mu.Lock()
	f.keySock = opts.KeyProviderSocket
	f.mu.Unlock()
	if image == deniedRef {
		return nil, &pull.Error{Reason: agentapi.ReasonKeyUnavailable, Err: errors.New("pull " + image + ": unwrap layer key: KBS: resource policy denied")}
	}
	return &pull.Image{
		Rootfs: busyboxRoot,
		Config: ocispec.ImageConfig{
			Env:        []string{"FOO=image", "BAR=image"},
			Cmd:        []string{"/bin/sh", "-c", "echo $FOO $BAR $(pwd)"},
			WorkingDir: "/tmp",
		},
		Response: &agentapi.PullImageResponse{Image: image, ManifestDigest: "sha256:" + strings.Repeat("a", 64)},
	}, nil
}

type fakeNet struct {
	applied chan *hostinput.Network
}

func (n fakeNet) Apply(_ context.Context, cfg *hostinput.Network) error {
	n.applied <- cfg
	return nil
}

type fakeAttester struct {
	stopped   chan struct{}
	tee       string
	resources map[string][]byte // GetResource's KBS
}

func (a fakeAttester) Start(context.Context, []byte, *slog.Logger) (AttestationAgent, error) {
	return a, nil
}
func (a fakeAttester) KeyProviderSocket() string { return "/run/cloak-aa/keyprovider.sock" }
func (a fakeAttester) TEE() string               { return a.tee }
func (a fakeAttester) GetResource(_ context.Context, uri string) ([]byte, error) {
	if v, ok := a.resources[uri]; ok {
		return v, nil
	}
	return nil, status.Errorf(codes.NotFound, "resource %s not found", uri)
}
func (a fakeAttester) Stop() error { close(a.stopped); return nil }

type testAgent struct {
	client   agentapi.AgentServiceClient
	stateDir string
	puller   *fakePuller
	net      fakeNet
	aa       fakeAttester
	poweroff chan struct{}
}

// startAgent serves a Server on a unix socket, as `cloak-agent --listen`
// does, and returns a client connected to it.
func startAgent(t *testing.T) *testAgent {
	t.Helper()
	if noRuntime != "" {
		t.Skipf("cannot run containers here: %s", noRuntime)
	}
	if testing.Short() {
		t.Skip("runs containers with runc; skipped with -short")
	}
	ta := &testAgent{
		stateDir: t.TempDir(),
		puller:   &fakePuller{},
		net:      fakeNet{applied: make(chan *hostinput.Network, 1)},
		aa:       fakeAttester{stopped: make(chan struct{}), resources: map[string][]byte{}},
		poweroff: make(chan struct{}),
	}
	srv := New(Config{
		Log:        slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		StateDir:   ta.stateDir,
		RuncBinary: runcBinary,
		Puller:     ta.puller,
		Net:        ta.net,
		Attester:   ta.aa,
		PowerOff:   func() { close(ta.poweroff) },
	})
	// Containers a failed test left behind are killed and unmounted (runs
	// before the TempDir cleanup, registered earlier).
	t.Cleanup(func() {
		srv.mu.Lock()
		ids := make([]string, 0, len(srv.containers))
		for id := range srv.containers {
			ids = append(ids, id)
		}
		srv.mu.Unlock()
		for _, id := range ids {
			_ = srv.removeContainer(context.Background(), id, 0)
		}
		unmountUnder(t, ta.stateDir)
		srv.mu.Lock()
		sb := srv.sandbox
		srv.mu.Unlock()
		if sb != nil {
			removeSandboxCgroups(sb.GetSandboxId())
		}
	})
	sock := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(agentapi.MaxMessageSize), grpc.MaxSendMsgSize(agentapi.MaxMessageSize)}, GRPCOptions(srv)...)...)
	agentapi.RegisterAgentServiceServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ta.client = agentapi.NewAgentServiceClient(cc)
	return ta
}

// testWriter sends the agent's logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// unmountUnder removes mounts a failed test left under dir.
func unmountUnder(t *testing.T, dir string) {
	for _, m := range mountsUnder(t, dir) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
}

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	return out
}

// reasonOf is the agentapi reason an error carries.
func reasonOf(err error) string { return agentapi.ReasonOf(err) }

func wantErr(t *testing.T, what string, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code || reasonOf(err) != reason {
		t.Fatalf("%s: got %v (reason %q), want code %v reason %s", what, err, reasonOf(err), code, reason)
	}
}

// spec is the OCI spec a container manager would send for args.
func spec(args ...string) *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"BAR=host"}},
		Root:    &specs.Root{Path: "/host/path/is/ignored"},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}},
		},
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// output is what one ProcessIO attachment delivered.
type output struct {
	stdout, stderr bytes.Buffer
	eofs           []agentapi.ProcessIOResponse_Stream
	err            error
}

// attach opens ProcessIO, sends stdin (then, if closeStdin, the in-stream
// close_stdin, which must not overtake the data), and returns a channel with
// everything received once the call ends.
func (ta *testAgent) attach(ctx context.Context, t *testing.T, id, exec string, stdin []byte, closeStdin bool) <-chan *output {
	t.Helper()
	stream, err := ta.client.ProcessIO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_Attach_{Attach: &agentapi.ProcessIORequest_Attach{ContainerId: id, ExecId: exec}}}); err != nil {
		t.Fatal(err)
	}
	if len(stdin) > 0 {
		if err := stream.Send(&agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_Stdin{Stdin: stdin}}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan *output, 1)
	go func() {
		out := &output{}
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				out.err = err
				break
			}
			out.stdout.Write(m.GetStdout())
			out.stderr.Write(m.GetStderr())
			if _, ok := m.GetMsg().(*agentapi.ProcessIOResponse_Eof); ok {
				out.eofs = append(out.eofs, m.GetEof())
			}
		}
		done <- out
	}()
	if closeStdin {
		if err := stream.Send(&agentapi.ProcessIORequest{Msg: &agentapi.ProcessIORequest_CloseStdin{CloseStdin: true}}); err != nil {
			t.Fatalf("close_stdin: %v", err)
		}
	}
	return done
}

// run creates and starts a container, and returns its output and exit status.
func (ta *testAgent) run(ctx context.Context, t *testing.T, id string, s *specs.Spec, stdin []byte) (*output, int32) {
	t.Helper()
	if _, err := ta.client.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: id, Image: busyboxRef, OciSpec: mustJSON(t, s)}); err != nil {
		t.Fatalf("CreateContainer %s: %v", id, err)
	}
	done := ta.attach(ctx, t, id, "", stdin, stdin != nil)
	if _, err := ta.client.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
	w, err := ta.client.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("WaitProcess %s: %v", id, err)
	}
	out := <-done
	if out.err != nil {
		t.Fatalf("ProcessIO %s: %v", id, out.err)
	}
	return out, w.ExitStatus
}

func (ta *testAgent) remove(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	if _, err := ta.client.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("RemoveContainer %s: %v", id, err)
	}
	bundle := filepath.Join(ta.stateDir, "containers", id)
	if _, err := os.Stat(bundle); !os.IsNotExist(err) {
		t.Errorf("bundle %s still there after RemoveContainer (%v)", bundle, err)
	}
	if m := mountsUnder(t, bundle); len(m) > 0 {
		t.Errorf("mounts left after RemoveContainer: %v", m)
	}
}

func TestSandboxAndContainers(t *testing.T) {
	ta := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := ta.client

	if r, err := c.Check(ctx, &agentapi.CheckRequest{}); err != nil || r.Status != "SERVING" {
		t.Fatalf("Check: %v %v", r, err)
	}
	if v, err := c.Version(ctx, &agentapi.VersionRequest{}); err != nil || v.ApiVersion != "v1" || v.KernelRelease == "" {
		t.Fatalf("Version: %v %v", v, err)
	}
	_, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: busyboxRef})
	wantErr(t, "PullImage before CreateSandbox", err, codes.FailedPrecondition, agentapi.ReasonSandboxNotReady)

	// A fresh sandbox id per run: container cgroups are named after it, and
	// this test shares the machine's cgroups with others.
	sandboxID := fmt.Sprintf("pod-%d", time.Now().UnixNano())
	sb := &agentapi.CreateSandboxRequest{SandboxId: sandboxID, Hostname: "pod1", Initdata: []byte("version = \"0.1.0\"\n")}
	if _, err := c.CreateSandbox(ctx, sb); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	if got := <-ta.net.applied; got.Hostname != "pod1" {
		t.Fatalf("network applied with hostname %q, want the sandbox's pod1", got.Hostname)
	}
	_, err = c.CreateSandbox(ctx, sb)
	wantErr(t, "second CreateSandbox", err, codes.AlreadyExists, agentapi.ReasonAlreadyExists)

	_, err = c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "early", Image: busyboxRef, OciSpec: mustJSON(t, spec("true"))})
	wantErr(t, "CreateContainer before PullImage", err, codes.FailedPrecondition, agentapi.ReasonNotFound)
	if !strings.Contains(status.Convert(err).Message(), "call PullImage first") {
		t.Errorf("unhelpful message: %v", err)
	}

	if r, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: busyboxRef}); err != nil || r.Image != busyboxRef {
		t.Fatalf("PullImage: %v %v", r, err)
	}
	if ta.puller.keySock != ta.aa.KeyProviderSocket() {
		t.Errorf("puller got key provider %q, want the attestation agent's", ta.puller.keySock)
	}
	_, err = c.PullImage(ctx, &agentapi.PullImageRequest{Image: deniedRef})
	wantErr(t, "PullImage with a refused key", err, codes.PermissionDenied, agentapi.ReasonKeyUnavailable)
	if !strings.Contains(status.Convert(err).Message(), "resource policy denied") {
		t.Errorf("the KBS reason is lost: %v", err)
	}

	t.Run("echo", func(t *testing.T) {
		out, code := ta.run(ctx, t, "echo", spec("/bin/echo", "hello"), nil)
		if out.stdout.String() != "hello\n" || code != 0 {
			t.Fatalf("stdout %q exit %d", out.stdout.String(), code)
		}
		if len(out.eofs) != 2 {
			t.Errorf("eofs %v, want one per stream", out.eofs)
		}
		ta.remove(ctx, t, "echo")
	})

	t.Run("image defaults", func(t *testing.T) {
		// No args: the image's Cmd runs, in its WorkingDir, with its Env
		// overridden by the host's.
		out, code := ta.run(ctx, t, "defaults", spec(), nil)
		if got := out.stdout.String(); got != "image host /tmp\n" || code != 0 {
			t.Fatalf("stdout %q exit %d, want image env, host override, image cwd", got, code)
		}
		ta.remove(ctx, t, "defaults")
	})

	t.Run("sealed env", func(t *testing.T) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		jwk, _ := sealed.PublicJWK(&key.PublicKey, "")
		ta.aa.resources["kbs:///default/sealing/pub"], _ = json.Marshal(jwk)
		ta.aa.resources["kbs:///default/app/db-password"] = []byte("s3cr3t from the KBS")
		sealOf := func(key *ecdsa.PrivateKey, resource string) string {
			p, _ := kbstypes.ParseResourcePath(resource)
			v, err := sealed.Seal(sealed.Vault(p), key, "kbs:///default/sealing/pub")
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		sp := spec("/bin/sh", "-c", `echo "$DB_PASSWORD"`)
		sp.Process.Env = append(sp.Process.Env, "DB_PASSWORD="+sealOf(key, "default/app/db-password"))
		out, code := ta.run(ctx, t, "sealed", sp, nil)
		if got := out.stdout.String(); got != "s3cr3t from the KBS\n" || code != 0 {
			t.Fatalf("stdout %q exit %d, want the unsealed secret", got, code)
		}
		ta.remove(ctx, t, "sealed")

		// Signed by another key, or naming a resource the KBS does not
		// release: the container is not created, and the reason says why
		// without the secret.
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		for name, v := range map[string]string{"wrong signer": sealOf(other, "default/app/db-password"), "missing resource": sealOf(key, "default/app/none")} {
			sp := spec("/bin/true")
			sp.Process.Env = append(sp.Process.Env, "DB_PASSWORD="+v)
			_, err := ta.client.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "sealed-bad", Image: busyboxRef, OciSpec: mustJSON(t, sp)})
			wantErr(t, name, err, codes.FailedPrecondition, agentapi.ReasonSealedSecret)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, `env "DB_PASSWORD"`) || strings.Contains(msg, "s3cr3t") {
				t.Errorf("%s: message %q: want the variable named and no secret", name, msg)
			}
		}
	})

	t.Run("failing command", func(t *testing.T) {
		out, code := ta.run(ctx, t, "fail", spec("/bin/sh", "-c", "echo oops >&2; exit 3"), nil)
		if out.stderr.String() != "oops\n" || code != 3 {
			t.Fatalf("stderr %q exit %d", out.stderr.String(), code)
		}
		ta.remove(ctx, t, "fail")
	})

	t.Run("stdin", func(t *testing.T) {
		out, code := ta.run(ctx, t, "cat", spec("/bin/cat"), []byte("from the host\n"))
		if out.stdout.String() != "from the host\n" || code != 0 {
			t.Fatalf("stdout %q exit %d", out.stdout.String(), code)
		}
		ta.remove(ctx, t, "cat")
	})

	t.Run("CloseStdin call", func(t *testing.T) {
		if _, err := ta.client.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "cat2", Image: busyboxRef, OciSpec: mustJSON(t, spec("/bin/cat"))}); err != nil {
			t.Fatal(err)
		}
		done := ta.attach(ctx, t, "cat2", "", nil, false)
		if _, err := ta.client.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: "cat2"}); err != nil {
			t.Fatal(err)
		}
		if _, err := ta.client.CloseStdin(ctx, &agentapi.CloseStdinRequest{ContainerId: "cat2"}); err != nil {
			t.Fatalf("CloseStdin: %v", err)
		}
		w, err := ta.client.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "cat2"})
		if err != nil || w.ExitStatus != 0 {
			t.Fatalf("cat after CloseStdin: %v %v", w, err)
		}
		if out := <-done; out.stdout.Len() != 0 {
			t.Fatalf("stdout %q", out.stdout.String())
		}
		ta.remove(ctx, t, "cat2")
	})

	t.Run("terminal", func(t *testing.T) {
		s := spec("/bin/sh", "-c", "tty; stty size; echo tty-out")
		s.Process.Terminal = true
		s.Process.ConsoleSize = &specs.Box{Height: 40, Width: 100}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"newinstance", "ptmxmode=0666"}})
		out, code := ta.run(ctx, t, "tty", s, nil)
		got := out.stdout.String()
		if code != 0 || !strings.Contains(got, "/dev/pts/0") || !strings.Contains(got, "40 100") || !strings.Contains(got, "tty-out") {
			t.Fatalf("terminal output %q exit %d", got, code)
		}
		if len(out.eofs) != 1 || out.eofs[0] != agentapi.ProcessIOResponse_STREAM_STDOUT {
			t.Errorf("terminal eofs %v, want stdout only", out.eofs)
		}
		ta.remove(ctx, t, "tty")
	})

	t.Run("20 MiB output", func(t *testing.T) {
		out, code := ta.run(ctx, t, "big", spec("/bin/sh", "-c",
			"head -c 20971520 /dev/urandom > /tmp/data && sha256sum /tmp/data >&2 && cat /tmp/data"), nil)
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, out.stderr.String())
		}
		sum := sha256.Sum256(out.stdout.Bytes())
		want, _, _ := strings.Cut(out.stderr.String(), " ")
		if out.stdout.Len() != 20<<20 || hex.EncodeToString(sum[:]) != want {
			t.Fatalf("received %d bytes with sha256 %x, container wrote 20 MiB with %s", out.stdout.Len(), sum, want)
		}
		ta.remove(ctx, t, "big")
	})

	t.Run("exec signal stats update", func(t *testing.T) {
		if _, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "sleeper", Image: busyboxRef, OciSpec: mustJSON(t, spec("/bin/sleep", "600"))}); err != nil {
			t.Fatal(err)
		}
		// Two attachments race: whichever the agent sees second is refused
		// at once, the other one stays.
		a, b := ta.attach(ctx, t, "sleeper", "", nil, false), ta.attach(ctx, t, "sleeper", "", nil, false)
		var initOut <-chan *output
		select {
		case o := <-a:
			initOut = b
			if status.Code(o.err) != codes.FailedPrecondition {
				t.Fatalf("second attach: %v, want FailedPrecondition", o.err)
			}
		case o := <-b:
			initOut = a
			if status.Code(o.err) != codes.FailedPrecondition {
				t.Fatalf("second attach: %v, want FailedPrecondition", o.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a second ProcessIO attachment was not refused")
		}
		if _, err := c.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: "sleeper"}); err != nil {
			t.Fatal(err)
		}

		proc := &specs.Process{Args: []string{"/bin/sh", "-c", "echo exec-out; echo exec-err >&2"}, Cwd: "/", Env: []string{"PATH=/bin"}}
		if _, err := c.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: "sleeper", ExecId: "e1", Process: mustJSON(t, proc)}); err != nil {
			t.Fatalf("ExecProcess: %v", err)
		}
		eo := <-ta.attach(ctx, t, "sleeper", "e1", nil, false)
		if w, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "sleeper", ExecId: "e1"}); err != nil || w.ExitStatus != 0 {
			t.Fatalf("exec wait: %v %v", w, err)
		}
		if eo.err != nil || eo.stdout.String() != "exec-out\n" || eo.stderr.String() != "exec-err\n" {
			t.Fatalf("exec output %q %q %v", eo.stdout.String(), eo.stderr.String(), eo.err)
		}

		proc.Args = []string{"/bin/sleep", "600"}
		if _, err := c.ExecProcess(ctx, &agentapi.ExecProcessRequest{ContainerId: "sleeper", ExecId: "e2", Process: mustJSON(t, proc)}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: "sleeper", ExecId: "e2", Signal: uint32(unix.SIGTERM)}); err != nil {
			t.Fatal(err)
		}
		if w, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "sleeper", ExecId: "e2"}); err != nil || w.ExitStatus != 128+int32(unix.SIGTERM) {
			t.Fatalf("signalled exec: %v %v", w, err)
		}

		ps, err := c.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: "sleeper"})
		if err != nil || len(ps.Pids) == 0 {
			t.Fatalf("ListProcesses: %v %v", ps, err)
		}
		st, err := c.StatsContainer(ctx, &agentapi.StatsContainerRequest{ContainerId: "sleeper"})
		if err != nil || st.MemoryUsageBytes == 0 || st.PidsCurrent == 0 {
			t.Fatalf("StatsContainer: %v %v", st, err)
		}
		limit := int64(64)
		if _, err := c.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: "sleeper", Resources: mustJSON(t, specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}})}); err != nil {
			t.Fatalf("UpdateContainer: %v", err)
		}
		if st, err := c.StatsContainer(ctx, &agentapi.StatsContainerRequest{ContainerId: "sleeper"}); err != nil || st.PidsLimit != 64 {
			t.Fatalf("pids limit after update: %v %v", st, err)
		}
		_, err = c.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: "sleeper", Resources: []byte("{")})
		wantErr(t, "UpdateContainer with bad JSON", err, codes.InvalidArgument, agentapi.ReasonInvalidRequest)

		if _, err := c.SignalProcess(ctx, &agentapi.SignalProcessRequest{ContainerId: "sleeper", Signal: uint32(unix.SIGKILL)}); err != nil {
			t.Fatal(err)
		}
		if w, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "sleeper"}); err != nil || w.ExitStatus != 128+int32(unix.SIGKILL) {
			t.Fatalf("killed container: %v %v", w, err)
		}
		if o := <-initOut; o.err != nil || len(o.eofs) != 2 {
			t.Fatalf("init attachment: %+v", o)
		}
		ta.remove(ctx, t, "sleeper")
	})

	t.Run("refused requests", func(t *testing.T) {
		tests := []struct {
			name   string
			id     string
			mutate func(*specs.Spec)
			code   codes.Code
			reason string
		}{
			{"hook", "hook", func(s *specs.Spec) {
				s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/sh"}}}
			}, codes.PermissionDenied, agentapi.ReasonPolicy},
			{"host bind mount", "bind", func(s *specs.Spec) {
				s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/var/lib/kubelet/pods/x", Options: []string{"rbind"}})
			}, codes.PermissionDenied, agentapi.ReasonPolicy},
			{"namespace path", "nspath", func(s *specs.Spec) {
				s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"})
			}, codes.PermissionDenied, agentapi.ReasonPolicy},
			{"bad id", "../etc", func(*specs.Spec) {}, codes.InvalidArgument, agentapi.ReasonInvalidRequest},
			{"no process", "noproc", func(s *specs.Spec) { s.Process = nil }, codes.InvalidArgument, agentapi.ReasonInvalidRequest},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				s := spec("/bin/true")
				tt.mutate(s)
				_, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: tt.id, Image: busyboxRef, OciSpec: mustJSON(t, s)})
				wantErr(t, tt.name, err, tt.code, tt.reason)
				if _, err := os.Stat(filepath.Join(ta.stateDir, "containers", tt.id)); !os.IsNotExist(err) {
					t.Errorf("a refused container left its bundle (%v)", err)
				}
			})
		}
		_, err := c.WaitProcess(ctx, &agentapi.WaitProcessRequest{ContainerId: "nothere"})
		wantErr(t, "WaitProcess on an unknown container", err, codes.NotFound, agentapi.ReasonNotFound)
	})

	t.Run("destroy", func(t *testing.T) {
		if _, err := c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "left", Image: busyboxRef, OciSpec: mustJSON(t, spec("/bin/sleep", "600"))}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.StartContainer(ctx, &agentapi.StartContainerRequest{ContainerId: "left"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DestroySandbox(ctx, &agentapi.DestroySandboxRequest{}); err != nil {
			t.Fatalf("DestroySandbox: %v", err)
		}
		select {
		case <-ta.poweroff:
		case <-time.After(10 * time.Second):
			t.Fatal("PowerOff not called after DestroySandbox")
		}
		select {
		case <-ta.aa.stopped:
		default:
			t.Error("attestation agent not stopped")
		}
		if m := mountsUnder(t, ta.stateDir); len(m) > 0 {
			t.Errorf("mounts left after DestroySandbox: %v", m)
		}
		_, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: busyboxRef})
		wantErr(t, "PullImage after DestroySandbox", err, codes.FailedPrecondition, agentapi.ReasonSandboxNotReady)
	})
}

package agent

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/agentpolicy"
	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
)

// TestConfidentialGuestRefusesHostShare: a guest whose initdata an SNP or
// TDX report bound refuses the host's virtio-fs share itself, whatever the
// host's configuration said, and stops its attestation agent.
func TestConfidentialGuestRefusesHostShare(t *testing.T) {
	for _, tee := range []string{"snp", "tdx"} {
		t.Run(tee, func(t *testing.T) {
			aa := fakeAttester{stopped: make(chan struct{}), tee: tee}
			srv, err := createSharedSandbox(t, aa, "cloakfs")
			wantErr(t, "CreateSandbox with a share", err, codes.PermissionDenied, agentapi.ReasonPolicy)
			if msg := err.Error(); !strings.Contains(msg, "confidential "+tee+" guest") || !strings.Contains(msg, `"cloakfs"`) {
				t.Errorf("refusal does not say why: %v", err)
			}
			select {
			case <-aa.stopped:
			default:
				t.Error("the attestation agent still runs after the refusal")
			}
			if srv.sandbox != nil || srv.sharedFS {
				t.Error("the refused sandbox was recorded")
			}
		})
	}
}

// TestNonConfidentialGuestMountsHostShare: with a vTPM (or no attestation)
// the guest tries the share; here no virtio-fs device exists, so the mount
// itself fails, which shows it was not refused.
func TestNonConfidentialGuestMountsHostShare(t *testing.T) {
	aa := fakeAttester{stopped: make(chan struct{}), tee: "tpm"}
	_, err := createSharedSandbox(t, aa, "cloak-test-no-such-tag")
	wantErr(t, "CreateSandbox with a share and a vTPM", err, codes.FailedPrecondition, agentapi.ReasonInvalidRequest)
	if !strings.Contains(err.Error(), "mount the host's shared directory") {
		t.Errorf("want the mount attempted, got: %v", err)
	}
	select {
	case <-aa.stopped:
	default:
		t.Error("the attestation agent of the failed sandbox still runs")
	}
}

// allowAllInitdata is an initdata whose agent policy allows everything: the
// share refusal must hold whatever the policy says.
func allowAllInitdata() []byte {
	return []byte("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = '''\n" + agentpolicy.AllowAll + "'''\n")
}

// createSharedSandbox asks a fresh agent (no runc needed) for a sandbox
// with initdata, attested by aa, and the host's share tag.
func createSharedSandbox(t *testing.T, aa fakeAttester, tag string) (*Server, error) {
	srv := New(Config{
		Log:      slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		StateDir: t.TempDir(),
		Puller:   &fakePuller{},
		Net:      fakeNet{applied: make(chan *hostinput.Network, 1)},
		Attester: aa,
		PowerOff: func() {},
	})
	_, err := srv.CreateSandbox(context.Background(), &agentapi.CreateSandboxRequest{
		SandboxId: "pod1", Hostname: "pod1", Initdata: allowAllInitdata(), SharedFsTag: tag,
	})
	return srv, err
}

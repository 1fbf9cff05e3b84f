package task

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/shim/config"
)

// TestLogTimeline checks the fields ci/timeline reads from the shim's log.
func TestLogTimeline(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.Out = &buf
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(l))
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	sb := &sandbox{tee: teeLabel(config.Config{TEE: config.TEEEmulated, EmulatedPlatform: config.TEESNP}), times: vmTimes{
		requested: t0, qemuStarted: t0.Add(400 * time.Millisecond), agentReady: t0.Add(3 * time.Second), ready: t0.Add(3100 * time.Millisecond),
	}}
	c := &container{id: "c1", image: "r/secret:1", times: startTimes{
		pullStarted: t0.Add(4 * time.Second), pullDone: t0.Add(5 * time.Second), created: t0.Add(5100 * time.Millisecond),
		pull: &agentapi.PullImageResponse{Encrypted: true, ResolveNs: 1e8, FetchNs: 2e8, DecryptNs: 6e8, UnpackNs: 3e8},
	}}
	logTimeline(ctx, sb, "pod1", c, t0.Add(6*time.Second))
	line := buf.String()
	for _, want := range []string{
		`msg="pod start timeline"`, "container=c1", "sandbox=pod1", "tee=emulated-snp", `image="r/secret:1"`, "encrypted=true",
		`vm_requested="2026-11-27T12:00:00Z"`, `qemu_started="2026-11-27T12:00:00.4Z"`, `agent_ready="2026-11-27T12:00:03Z"`,
		`sandbox_ready="2026-11-27T12:00:03.1Z"`, `pull_started="2026-11-27T12:00:04Z"`, `pull_done="2026-11-27T12:00:05Z"`,
		`created="2026-11-27T12:00:05.1Z"`, `started="2026-11-27T12:00:06Z"`,
		"resolve_us=100000", "fetch_us=200000", "decrypt_us=600000", "unpack_us=300000",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("timeline line lacks %s:\n%s", want, line)
		}
	}
	if strings.Count(line, "\n") != 1 {
		t.Errorf("want one line, got:\n%s", line)
	}
}

// TestChangedInitdata: the attack's initdata reads the same but digests
// differently, so only the guest's binding check can catch it.
func TestChangedInitdata(t *testing.T) {
	orig := []byte("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs\"\n'''\n")
	changed := changedInitdata(orig)
	_, d1, err1 := kbstypes.InitdataDigest(orig)
	_, d2, err2 := kbstypes.InitdataDigest(changed)
	if err1 != nil || err2 != nil {
		t.Fatalf("digest: %v, %v", err1, err2)
	}
	if bytes.Equal(d1, d2) {
		t.Error("the changed initdata has the launched digest")
	}
	if !bytes.HasPrefix(changed, orig) {
		t.Errorf("changed initdata %q does not keep the original settings", changed)
	}
}

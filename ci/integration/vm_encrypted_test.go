package integration

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/kbs/keywrap"
)

// initdataFor is the pod's initdata: it names the KBS (as the guest reaches
// it) and the certificate to trust, in CoCo's TOML format.
func initdataFor(kbsURL string, caPEM []byte) []byte {
	return []byte(fmt.Sprintf(`version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "%s"
cert = """
%s"""
'''
%s`, kbsURL, caPEM, allowAllPolicyEntry))
}

// TestVMEncryptedImage runs an ocicrypt-encrypted image whose key sits in a
// real KBS: the guest attests (sample TEE, permissive policy for that key),
// gets the key, decrypts and runs the image. An image whose key the policy
// refuses fails PullImage with the KBS's reason, and nothing runs.
func TestVMEncryptedImage(t *testing.T) {
	dir := t.TempDir()
	adminKey, adminPub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	mustRun(t, nil, "kbsctl", "keygen", "--private-key", adminKey, "--public-key", adminPub)
	kbs := startKBSBinary(t, filepath.Join(dir, "kbs"), "--admin-public-key", adminPub, "--tls-san", hostFromGuest)
	ctl := func(args ...string) []string {
		return append([]string{"--url", kbs.url, "--cacert", kbs.ca, "--admin-key", adminKey}, args...)
	}
	kek, kekPath := newKEK(t, dir)
	mustRun(t, kek, "kbsctl", ctl("resource", "set", "default/image-key/allowed", "--file", "-")...)
	mustRun(t, kek, "kbsctl", ctl("resource", "set", "default/image-key/refused", "--file", "-")...)
	mustRun(t, nil, "kbsctl", ctl("reference-value", "set", "sample_svn", "1")...)
	policy := filepath.Join(dir, "policy.rego")
	if err := os.WriteFile(policy, []byte(`package policy

import rego.v1

default allow := false

allow if {
	input.submods.cpu0["ear.status"] == "affirming"
	data["resource-path"] == "default/image-key/allowed"
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, nil, "kbsctl", ctl("resource-policy", "set", "--file", policy)...)

	// Encrypt two images on the host, under the two key ids.
	wrapSock := filepath.Join(dir, "wrap.sock")
	serveUntilDone(t, func(ctx context.Context) error { return keywrap.Serve(ctx, wrapSock, nil) })
	waitSocket(t, wrapSock)
	useProvider(wrapSock)
	reg := startRegistry(t)
	allowed := pushEncryptedBusybox(t, reg, "secret-allowed", kekPath, "kbs:///default/image-key/allowed")
	refused := pushEncryptedBusybox(t, reg, "secret-refused", kekPath, "kbs:///default/image-key/refused")

	caPEM, err := os.ReadFile(kbs.ca)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(kbs.url)
	if err != nil {
		t.Fatal(err)
	}
	guestKBS := "https://" + hostFromGuest + ":" + u.Port()
	// The pod's initdata is part of what the KBS appraises: register its
	// digest as the expected guest configuration.
	initdata := initdataFor(guestKBS, caPEM)
	digest := sha512.Sum384(initdata)
	mustRun(t, nil, "kbsctl", ctl("reference-value", "set", "init_data", hex.EncodeToString(digest[:]))...)

	vm := bootVM(t)
	c := connectAgent(t, vm)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.CreateSandbox(ctx, sandboxRequest(initdata)); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}

	pulled, err := c.PullImage(ctx, &agentapi.PullImageRequest{Image: allowed, Registry: registryOptions(reg)})
	if err != nil {
		t.Fatalf("PullImage of the allowed encrypted image: %v", err)
	}
	if !pulled.Encrypted || pulled.DecryptNs <= 0 {
		t.Errorf("PullImage answer %+v: want encrypted with a decrypt time", pulled)
	}
	wait := runContainer(t, ctx, c, "secret", allowed, "/bin/cat", "/etc/recipe.txt")
	if out, code := wait(); out != "the secret recipe\n" || code != 0 {
		t.Fatalf("container from the decrypted image: output %q exit %d", out, code)
	}

	_, err = c.PullImage(ctx, &agentapi.PullImageRequest{Image: refused, Registry: registryOptions(reg)})
	if err == nil {
		t.Fatal("PullImage of an image whose key the KBS refuses succeeded")
	}
	if reasonOf(err) != agentapi.ReasonKeyUnavailable || !strings.Contains(err.Error(), "resource policy") {
		t.Fatalf("PullImage refusal: reason %q, error %v; want %s quoting the KBS's resource-policy reason", reasonOf(err), err, agentapi.ReasonKeyUnavailable)
	}
	_, err = c.CreateContainer(ctx, &agentapi.CreateContainerRequest{ContainerId: "never", Image: refused, OciSpec: containerSpec(t, "/bin/true")})
	if reasonOf(err) != agentapi.ReasonNotFound {
		t.Fatalf("CreateContainer from the refused image: %v; want %s (image not pulled)", err, agentapi.ReasonNotFound)
	}

	// The KBS audit shows the release and the refusal.
	audit := mustRun(t, nil, "kbsctl", ctl("audit", "--output", "json", "--limit", "1000")...)
	for _, want := range []string{`"resource": "default/image-key/allowed"`, `"resource": "default/image-key/refused"`} {
		if !bytes.Contains([]byte(audit), []byte(want)) {
			t.Errorf("audit lacks %s", want)
		}
	}
}

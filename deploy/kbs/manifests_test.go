// Package kbs holds the Kubernetes manifests of the KBS; its test checks
// that they parse as the Kubernetes types they claim to be and hang
// together (no kubectl or cluster needed).
package kbs

import (
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// secrets are the Secrets README.md tells the operator to create.
var secrets = []string{"cloak-kbs-db", "cloak-kbs-keys", "cloak-kbs-tls", "cloak-kbs-admin", "cloak-kbs-signers"}

func TestManifests(t *testing.T) {
	raw, err := os.ReadFile("kbs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	var svc corev1.Service
	var pdb policyv1.PodDisruptionBudget
	kinds := map[string]any{"Deployment": &dep, "Service": &svc, "PodDisruptionBudget": &pdb}
	seen := map[string]bool{}
	for i, doc := range strings.Split(string(raw), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		out, ok := kinds[meta.Kind]
		if !ok || seen[meta.Kind] {
			t.Fatalf("document %d: unexpected or repeated kind %q", i, meta.Kind)
		}
		seen[meta.Kind] = true
		// Strict: a misspelt or misplaced field is an error, as
		// kubectl --dry-run would report it.
		if err := yaml.UnmarshalStrict([]byte(doc), out); err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
	}
	if len(seen) != len(kinds) {
		t.Fatalf("kinds %v, want %d", seen, len(kinds))
	}

	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", dep.Spec.Replicas)
	}
	podLabels := labels.Set(dep.Spec.Template.Labels)
	for name, sel := range map[string]map[string]string{
		"Deployment": dep.Spec.Selector.MatchLabels, "Service": svc.Spec.Selector, "PodDisruptionBudget": pdb.Spec.Selector.MatchLabels,
	} {
		if len(sel) == 0 || !labels.SelectorFromSet(sel).Matches(podLabels) {
			t.Errorf("%s selector %v does not select the pods %v", name, sel, podLabels)
		}
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() >= 3 {
		t.Errorf("PodDisruptionBudget minAvailable %v would block every drain of 3 replicas", pdb.Spec.MinAvailable)
	}

	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--storage=$(KBS_STORAGE_URL)", "--data-dir=", "--tls-cert=", "--admin-public-key=", "--reference-value-signer="} {
		if !strings.Contains(args, want) {
			t.Errorf("kbs args lack %q: %s", want, args)
		}
	}
	envFrom := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("env %s is not from a Secret", e.Name)
			continue
		}
		envFrom[e.Name] = e.ValueFrom.SecretKeyRef.Name
	}
	if envFrom["KBS_STORAGE_URL"] != "cloak-kbs-db" || envFrom["PGPASSWORD"] != "cloak-kbs-db" {
		t.Errorf("database URL and password should come from Secret cloak-kbs-db: %v", envFrom)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
		t.Errorf("readiness probe %+v, want HTTPS /healthz (503 while the database is down)", p)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet != nil {
		t.Errorf("liveness probe %+v must not depend on the database (/healthz)", p)
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
		if v.Secret != nil && !slices.Contains(secrets, v.Secret.SecretName) {
			t.Errorf("volume %s uses Secret %s, which README.md does not create", v.Name, v.Secret.SecretName)
		}
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s of an undeclared volume", m.Name)
		}
		mounted[m.MountPath] = true
	}
	for _, p := range []string{"/var/lib/cloak-kbs/storage.key", "/var/lib/cloak-kbs/token-key.pem"} {
		if !mounted[p] {
			t.Errorf("%s is not mounted from the shared Secret: replicas would each create their own", p)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort.StrVal != "https" || c.Ports[0].Name != "https" {
			t.Errorf("Service port %+v does not target the container's https port", p)
		}
	}
}

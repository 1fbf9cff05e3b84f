// Package generate is `cloak generate`: it reads Kubernetes YAML, pins what
// each pod's containers will run (image digests, argv, env, user,
// capabilities, mounts, exec commands) as the agent policy's policy_data,
// and writes the YAML back with the policy in the pod's initdata
// annotation and the Cloak runtime class, as Contrast's generate and Kata's
// genpolicy do.
//
// What it pins is what kubelet sends to CRI and containerd v2.2's CRI makes
// of it; the comments on each step name the containerd or kubelet code it
// follows.
package generate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/cloak-containers/cloak/agentpolicy"
	"github.com/cloak-containers/cloak/api/kbstypes"
)

// MaxInputSize bounds the YAML read: far more than any set of manifests.
const MaxInputSize = 1 << 20

// AnnotationInitdata is the pod annotation the shim reads the initdata from
// (shim/task: base64 of the TOML, gzip allowed).
const AnnotationInitdata = "io.cloak.initdata"

// DefaultRuntimeClass is the runtime class set on pods that name none: the
// handler the demo and CI run end to end. Production pods name cloak-snp or
// cloak-tdx with --runtime-class.
const DefaultRuntimeClass = "cloak-emulated"

// Options say how to generate.
type Options struct {
	// Namespace is the namespace of objects that name none ("default").
	Namespace string
	// RuntimeClass is set as spec.runtimeClassName where a pod names none,
	// and everywhere when OverrideRuntimeClass is set.
	RuntimeClass         string
	OverrideRuntimeClass bool
	// KBSURL and KBSCert (PEM, optional) go into the initdata's aa.toml.
	KBSURL  string
	KBSCert []byte
	// AllowExec lets the host exec anything in every container: debugging
	// only, it is visible in the initdata digest.
	AllowExec bool
	Resolver  Resolver
}

// Result is the generated YAML and, per pod, what was pinned.
type Result struct {
	YAML     []byte
	Pods     []Pod
	Warnings []string
}

// Pod is one pod template's policy.
type Pod struct {
	Kind, Name, Namespace string
	// RuntimeClass is the pod's spec.runtimeClassName as written.
	RuntimeClass string
	Data         agentpolicy.Data
	// Initdata is the TOML document the annotation carries; Digest its
	// sha384 (kbstypes.InitdataDigest), the KBS's init_data reference value.
	Initdata   []byte
	Annotation string
	Digest     []byte

	tmpl *podTemplate
}

// Error is a refusal or failure about one object, with what to do.
type Error struct {
	Object    string // "Deployment/web" (empty for the input as a whole)
	Container string
	Field     string // e.g. spec.template.spec.containers[0].securityContext.privileged
	Problem   string
	Hint      string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Object != "" {
		b.WriteString(e.Object)
		if e.Container != "" {
			fmt.Fprintf(&b, " container %q", e.Container)
		}
		if e.Field != "" {
			b.WriteString(" " + e.Field)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	return b.String()
}

func (p *podTemplate) ref() string { return p.kind + "/" + p.name }

func (p *podTemplate) refuse(container, field, problem, hint string) *Error {
	return &Error{Object: p.ref(), Container: container, Field: field, Problem: problem, Hint: hint}
}

type generator struct{ opts Options }

// Generate pins every pod of the YAML stream in.
func Generate(ctx context.Context, in []byte, opts Options) (*Result, error) {
	if len(in) > MaxInputSize {
		return nil, &Error{Problem: fmt.Sprintf("input is larger than %d bytes", MaxInputSize), Hint: "split the manifests and generate each part on its own"}
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	if opts.RuntimeClass == "" {
		opts.RuntimeClass = DefaultRuntimeClass
	}
	if opts.Resolver == nil {
		return nil, errors.New("generate: no image resolver")
	}
	aa, err := aaTOML(opts.KBSURL, opts.KBSCert)
	if err != nil {
		return nil, err
	}
	g := &generator{opts: opts}
	res := &Result{}
	var out bytes.Buffer
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(in)))
	for n := 0; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, &Error{Problem: fmt.Sprintf("document %d: %v", n+1, err), Hint: "the input must be YAML documents separated by ---"}
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		written, pod, warnings, err := g.document(ctx, doc, n, aa)
		if err != nil {
			return nil, err
		}
		if pod != nil {
			res.Pods = append(res.Pods, *pod)
		}
		res.Warnings = append(res.Warnings, warnings...)
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		out.Write(written)
		if !bytes.HasSuffix(written, []byte("\n")) {
			out.WriteByte('\n')
		}
	}
	res.YAML = out.Bytes()
	return res, nil
}

// document handles one YAML document: a pod or controller is pinned and
// rewritten, anything else passes through as it was.
func (g *generator) document(ctx context.Context, doc []byte, n int, aa string) ([]byte, *Pod, []string, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, nil, nil, &Error{Problem: fmt.Sprintf("document %d is not a Kubernetes object: %v", n+1, err), Hint: "fix the YAML"}
	}
	p, err := g.template(doc, tm)
	if err != nil || p == nil {
		return doc, nil, nil, err
	}
	data, warnings, err := g.podData(ctx, p)
	if err != nil {
		return nil, nil, nil, err
	}
	module, err := agentpolicy.Module(data)
	if err != nil {
		return nil, nil, nil, err
	}
	initdata, err := initdataTOML(aa, string(module))
	if err != nil {
		return nil, nil, nil, &Error{Object: p.ref(), Problem: err.Error(), Hint: "report this: the policy could not be encoded"}
	}
	_, digest, err := kbstypes.InitdataDigest(initdata)
	if err != nil {
		return nil, nil, nil, &Error{Object: p.ref(), Problem: fmt.Sprintf("initdata: %v", err), Hint: "the pod has too many containers or too much pinned data for the 256 KiB initdata; split it"}
	}
	annotation, err := encodeAnnotation(initdata)
	if err != nil {
		return nil, nil, nil, &Error{Object: p.ref(), Problem: err.Error(), Hint: "split the pod"}
	}
	written, err := g.rewrite(doc, tm.Kind, annotation)
	if err != nil {
		return nil, nil, nil, &Error{Object: p.ref(), Problem: fmt.Sprintf("rewrite: %v", err), Hint: "fix the YAML"}
	}
	rc := g.opts.RuntimeClass
	if p.spec.RuntimeClassName != nil && *p.spec.RuntimeClassName != "" && !g.opts.OverrideRuntimeClass {
		rc = *p.spec.RuntimeClassName
	}
	return written, &Pod{Kind: p.kind, Name: p.name, Namespace: p.namespace, RuntimeClass: rc, Data: data,
		Initdata: initdata, Annotation: annotation, Digest: digest, tmpl: p}, warnings, nil
}

// template decodes the pod template of the kinds that have one; nil for
// the others.
func (g *generator) template(doc []byte, tm metav1.TypeMeta) (*podTemplate, error) {
	var (
		meta    metav1.ObjectMeta
		tmpl    *corev1.PodTemplateSpec
		spec    *corev1.PodSpec
		path    string
		pattern func(name string) (re, example string)
		obj     any
	)
	suffix := func(re, example string) func(string) (string, string) {
		return func(name string) (string, string) {
			return "^" + regexpQuote(name) + re + "$", name + example
		}
	}
	group, _, _ := strings.Cut(tm.APIVersion, "/")
	if !strings.Contains(tm.APIVersion, "/") {
		group = ""
	}
	switch {
	case tm.Kind == "Pod" && group == "":
		var o corev1.Pod
		obj, spec, path = &o, &o.Spec, "spec"
	case tm.Kind == "Deployment" && group == "apps":
		var o appsv1.Deployment
		obj, tmpl, path, pattern = &o, &o.Spec.Template, "spec.template.spec", suffix("-[a-z0-9]+-[a-z0-9]+", "-5d9c7b8f6c-x7k2p")
	case tm.Kind == "StatefulSet" && group == "apps":
		var o appsv1.StatefulSet
		obj, tmpl, path, pattern = &o, &o.Spec.Template, "spec.template.spec", suffix("-[0-9]+", "-0")
	case tm.Kind == "DaemonSet" && group == "apps":
		var o appsv1.DaemonSet
		obj, tmpl, path, pattern = &o, &o.Spec.Template, "spec.template.spec", suffix("-[a-z0-9]+", "-x7k2p")
	case tm.Kind == "ReplicaSet" && group == "apps":
		var o appsv1.ReplicaSet
		obj, tmpl, path, pattern = &o, &o.Spec.Template, "spec.template.spec", suffix("-[a-z0-9]+", "-x7k2p")
	case tm.Kind == "Job" && group == "batch":
		var o batchv1.Job
		obj, tmpl, path, pattern = &o, &o.Spec.Template, "spec.template.spec", suffix("-[a-z0-9]+", "-x7k2p")
	case tm.Kind == "CronJob" && group == "batch":
		var o batchv1.CronJob
		obj, tmpl, path, pattern = &o, &o.Spec.JobTemplate.Spec.Template, "spec.jobTemplate.spec.template.spec", suffix("-[0-9]+-[a-z0-9]+", "-29000000-x7k2p")
	case tm.Kind == "List" || strings.HasSuffix(tm.Kind, "List"):
		return nil, &Error{Object: tm.Kind, Problem: "a List's items are not read", Hint: "write the items as documents separated by ---"}
	default:
		return nil, nil
	}
	ref := tm.Kind
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, &Error{Object: ref, Problem: fmt.Sprintf("not a valid %s %s: %v", tm.APIVersion, tm.Kind, err),
			Hint: "fix or remove the field (cloak generate reads the Kubernetes v1.34 API strictly, so that no field it does not understand goes unpinned)"}
	}
	p := &podTemplate{kind: tm.Kind, path: path}
	if spec == nil { // a controller
		m := metaOf(obj)
		meta = m
		spec = &tmpl.Spec
		p.meta = &podMeta{labels: tmpl.Labels, annotations: tmpl.Annotations}
		if meta.Name == "" {
			return nil, &Error{Object: ref, Problem: "metadata.name is empty", Hint: "name the object"}
		}
		p.name = meta.Name
		p.namePattern, p.exampleName = pattern(meta.Name)
	} else {
		o := obj.(*corev1.Pod)
		meta = o.ObjectMeta
		p.meta = &podMeta{labels: meta.Labels, annotations: meta.Annotations}
		switch {
		case meta.Name != "":
			p.name, p.namePattern, p.exampleName = meta.Name, "^"+regexpQuote(meta.Name)+"$", meta.Name
		case meta.GenerateName != "":
			p.name, p.namePattern, p.exampleName = meta.GenerateName, "^"+regexpQuote(meta.GenerateName)+"[a-z0-9]+$", meta.GenerateName+"x7k2p"
		default:
			return nil, &Error{Object: ref, Problem: "metadata.name is empty", Hint: "name the pod"}
		}
	}
	p.namespace = meta.Namespace
	if p.namespace == "" {
		p.namespace = g.opts.Namespace
	}
	p.spec = spec
	return p, nil
}

func metaOf(obj any) metav1.ObjectMeta {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.ObjectMeta
	case *appsv1.StatefulSet:
		return o.ObjectMeta
	case *appsv1.DaemonSet:
		return o.ObjectMeta
	case *appsv1.ReplicaSet:
		return o.ObjectMeta
	case *batchv1.Job:
		return o.ObjectMeta
	case *batchv1.CronJob:
		return o.ObjectMeta
	}
	return metav1.ObjectMeta{}
}

// rewrite sets the initdata annotation and the runtime class on the pod
// template, keeping every other field (re-encoded, so key order and
// comments are not kept).
func (g *generator) rewrite(doc []byte, kind, annotation string) ([]byte, error) {
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, err
	}
	var tmpl map[string]any
	switch kind {
	case "Pod":
		tmpl = obj
	case "CronJob":
		tmpl = child(child(child(child(obj, "spec"), "jobTemplate"), "spec"), "template")
	default:
		tmpl = child(child(obj, "spec"), "template")
	}
	annotations := child(child(tmpl, "metadata"), "annotations")
	annotations[AnnotationInitdata] = annotation
	spec := child(tmpl, "spec")
	if rc, _ := spec["runtimeClassName"].(string); rc == "" || g.opts.OverrideRuntimeClass {
		spec["runtimeClassName"] = g.opts.RuntimeClass
	}
	return yaml.Marshal(obj)
}

// child returns m[key] as a map, creating it if absent or null.
func child(m map[string]any, key string) map[string]any {
	c, ok := m[key].(map[string]any)
	if !ok {
		c = map[string]any{}
		m[key] = c
	}
	return c
}

func regexpQuote(s string) string { return regexp.QuoteMeta(s) }

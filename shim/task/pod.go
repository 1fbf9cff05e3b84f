package task

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/shim/config"
	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// Annotations containerd's CRI plugin writes in every spec of a pod.
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	containerTypeSandbox    = "sandbox"
	containerTypeContainer  = "container"
)

// Pod annotations that change a pod's VM, each honoured only when its short
// name is in the handler's allowed_annotations (CRI passes them on only for
// runtimes whose pod_annotations list matches, e.g. "io.cloak.*").
const (
	AnnotationInitdata = "io.cloak.initdata"   // base64 of the initdata TOML, gzip allowed
	AnnotationVCPUs    = "io.cloak.vcpus"      // 1..256
	AnnotationMemory   = "io.cloak.memory_mib" // 128..1048576
)

// podAnnotations maps each annotation to its allowed_annotations name.
var podAnnotations = map[string]string{
	AnnotationInitdata: config.AnnotationInitdata,
	AnnotationVCPUs:    config.AnnotationVCPUs,
	AnnotationMemory:   config.AnnotationMemory,
}

// Bounds on what a pod may ask for through annotations. Initdata is a small
// TOML document (CoCo's limit is in the same range); the guest enforces its
// own limit too.
const (
	maxInitdataSize = 256 << 10
	maxVCPUs        = 256
	minMemoryMiB    = 128
	maxMemoryMiB    = 1 << 20
)

// taskKind is what a task is to the shim.
type taskKind int

const (
	// standalone: a task outside any CRI pod (`ctr run`); it has a VM of
	// its own.
	standalone taskKind = iota
	// podSandbox: CRI's pause container. Its lifetime is the VM's: nothing
	// runs for it in the guest.
	podSandbox
	// podContainer: a CRI container, run in its pod's VM.
	podContainer
)

// kindOf classifies a task by its CRI annotations and returns the id of its
// pod (the sandbox's container id; the task's own id when standalone).
func kindOf(id string, annotations map[string]string) (taskKind, string) {
	switch annotations[annotationContainerType] {
	case containerTypeSandbox:
		return podSandbox, id
	case containerTypeContainer:
		if sb := annotations[annotationSandboxID]; sb != "" {
			return podContainer, sb
		}
	}
	return standalone, id
}

// groupID is the shim a task belongs to: one shim per pod, so the
// containers of a pod find the VM the sandbox started.
func groupID(id string, annotations map[string]string) string {
	_, pod := kindOf(id, annotations)
	return pod
}

// readAnnotations reads only the annotations of the bundle's config.json,
// for `start`, which must stay cheap.
func readAnnotations(bundle string) (map[string]string, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read bundle spec: %w", err)
	}
	defer f.Close()
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.NewDecoder(io.LimitReader(f, maxSpecSize)).Decode(&spec); err != nil {
		return nil, fmt.Errorf("parse bundle spec: %w", err)
	}
	return spec.Annotations, nil
}

// vmSettings is what a pod's VM is started with: the handler's config as
// changed by the pod's allowed annotations.
type vmSettings struct {
	vcpus, memoryMiB int
	// initdata goes to the guest (and, for SNP/TDX, its digest into the
	// launch measurement); nil: none.
	initdata []byte
	tee      qemu.TEE
}

// vmSettingsFor applies the pod's annotations to cfg. An io.cloak.*
// annotation that is unknown or not allowed by the handler is an error: a
// pod must not believe it got an initdata or size that was ignored.
func vmSettingsFor(cfg config.Config, annotations map[string]string) (vmSettings, error) {
	vs := vmSettings{vcpus: cfg.VCPUs, memoryMiB: cfg.MemoryMiB}
	keys := make([]string, 0, len(annotations))
	for k := range annotations {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first bad one in a stable order
	for _, k := range keys {
		if !strings.HasPrefix(k, "io.cloak.") || k == AnnotationImage {
			continue
		}
		name, known := podAnnotations[k]
		if !known {
			return vs, fmt.Errorf("annotation %s: unknown to cloak (known: %s, %s, %s, %s): %w",
				k, AnnotationImage, AnnotationInitdata, AnnotationVCPUs, AnnotationMemory, errdefs.ErrInvalidArgument)
		}
		if !cfg.AnnotationAllowed(name) {
			return vs, fmt.Errorf("annotation %s: not allowed by this runtime handler; add %q to allowed_annotations in its configuration to let pods set it: %w",
				k, name, errdefs.ErrPermissionDenied)
		}
		v := annotations[k]
		var err error
		switch k {
		case AnnotationVCPUs:
			vs.vcpus, err = boundedInt(k, v, 1, maxVCPUs)
		case AnnotationMemory:
			vs.memoryMiB, err = boundedInt(k, v, minMemoryMiB, maxMemoryMiB)
		case AnnotationInitdata:
			vs.initdata, err = decodeInitdata(v)
		}
		if err != nil {
			return vs, err
		}
	}
	if vs.initdata == nil {
		var err error
		if vs.initdata, err = defaultInitdata(cfg.KBS); err != nil {
			return vs, err
		}
	}
	if vs.initdata != nil {
		// The guest, the KBS and the TEE launch all digest it: refuse
		// one they cannot read now, with the reason.
		if _, _, err := kbstypes.InitdataDigest(vs.initdata); err != nil {
			return vs, fmt.Errorf("pod initdata: %w: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.Confidential() {
		if err := requirePolicy(cfg.TEE, vs.initdata); err != nil {
			return vs, err
		}
	}
	var err error
	vs.tee, err = teeFor(cfg, vs.initdata)
	return vs, err
}

func boundedInt(key, v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("annotation %s=%q: want an integer in %d..%d: %w", key, v, lo, hi, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// decodeInitdata reads the annotation as Kata's cc_init_data is written:
// base64 of the TOML document, optionally gzip-compressed.
func decodeInitdata(v string) ([]byte, error) {
	if base64.StdEncoding.DecodedLen(len(v)) > maxInitdataSize {
		return nil, fmt.Errorf("annotation %s: larger than %d bytes: %w", AnnotationInitdata, maxInitdataSize, errdefs.ErrInvalidArgument)
	}
	raw, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: not base64 (%v); encode the initdata TOML with `base64 -w0` (gzip first if you like): %w", AnnotationInitdata, err, errdefs.ErrInvalidArgument)
	}
	if bytes.HasPrefix(raw, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("annotation %s: bad gzip: %v: %w", AnnotationInitdata, err, errdefs.ErrInvalidArgument)
		}
		if raw, err = io.ReadAll(io.LimitReader(zr, maxInitdataSize+1)); err != nil {
			return nil, fmt.Errorf("annotation %s: bad gzip: %v: %w", AnnotationInitdata, err, errdefs.ErrInvalidArgument)
		}
	}
	if len(raw) > maxInitdataSize {
		return nil, fmt.Errorf("annotation %s: initdata larger than %d bytes: %w", AnnotationInitdata, maxInitdataSize, errdefs.ErrInvalidArgument)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("annotation %s: empty initdata: %w", AnnotationInitdata, errdefs.ErrInvalidArgument)
	}
	return raw, nil
}

// requirePolicy refuses, before a VM boots, a confidential pod whose
// initdata carries no agent policy: its guest would refuse it anyway
// (guest-image/agent), and a pod that ran without one would let the host
// exec into it.
func requirePolicy(tee string, initdata []byte) error {
	const hint = "generate the pod's initdata with `cloak generate pod.yaml --kbs-url URL` (docs/agent-policy.md) and pass it in the io.cloak.initdata annotation, or in the handler's [kbs] initdata_file"
	if initdata == nil {
		return fmt.Errorf("tee = %q is a confidential handler and this pod has no initdata, so no agent policy: %s: %w", tee, hint, errdefs.ErrInvalidArgument)
	}
	var doc struct {
		Data map[string]string `toml:"data"`
	}
	if err := toml.Unmarshal(initdata, &doc); err != nil {
		return fmt.Errorf("pod initdata is not TOML: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if strings.TrimSpace(doc.Data["policy.rego"]) == "" {
		return fmt.Errorf("tee = %q is a confidential handler and the pod's initdata has no agent policy ([data] \"policy.rego\"): %s: %w", tee, hint, errdefs.ErrInvalidArgument)
	}
	return nil
}

// defaultInitdata is the handler's initdata: the configured file, or a
// document naming the KBS (CoCo's initdata TOML with an aa.toml), or none.
func defaultInitdata(k config.KBS) ([]byte, error) {
	if k.InitdataFile != "" {
		raw, err := readBounded(k.InitdataFile, maxInitdataSize)
		if err != nil {
			return nil, fmt.Errorf("[kbs] initdata_file: %w", err)
		}
		return raw, nil
	}
	if k.URL == "" {
		return nil, nil
	}
	var ca []byte
	if k.CAFile != "" {
		var err error
		if ca, err = readBounded(k.CAFile, 64<<10); err != nil {
			return nil, fmt.Errorf("[kbs] ca_file: %w", err)
		}
		if strings.Contains(string(ca), `"""`) || strings.Contains(string(ca), "'''") {
			return nil, errors.New("[kbs] ca_file: not a PEM file (it holds TOML string quotes)")
		}
	}
	var b strings.Builder
	b.WriteString("version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\n")
	fmt.Fprintf(&b, "url = %q\n", k.URL)
	if ca != nil {
		fmt.Fprintf(&b, "cert = \"\"\"\n%s\"\"\"\n", strings.TrimRight(string(ca), "\n")+"\n")
	}
	b.WriteString("'''\n")
	return []byte(b.String()), nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return raw, nil
}

// teeFor maps the handler's tee to QEMU's. emulated runs an ordinary VM
// with the emulated SEV-SNP secure processor on its cloak.sp port
// (sandbox.go, emulated.go): the guest attests as snp, with HOST_DATA the
// sha256 of the initdata. SNP and TDX bind the initdata digest into the
// launch: the document's digest under its own algorithm
// (kbstypes.InitdataDigest), fitted to HOST_DATA's 32 or MRCONFIGID's 48
// bytes.
func teeFor(cfg config.Config, initdata []byte) (qemu.TEE, error) {
	switch cfg.TEE {
	case config.TEESNP, config.TEETDX:
		if initdata == nil {
			return qemu.TEE{}, fmt.Errorf("tee %q needs initdata to bind into the launch measurement: set [kbs] url or initdata_file in the handler's configuration", cfg.TEE)
		}
		_, digest, err := kbstypes.InitdataDigest(initdata)
		if err != nil {
			return qemu.TEE{}, err
		}
		if cfg.TEE == config.TEESNP {
			return qemu.TEE{Kind: qemu.TEESNP, InitdataDigest: kbstypes.FitDigest(digest, 32)}, nil
		}
		return qemu.TEE{Kind: qemu.TEETDX, InitdataDigest: kbstypes.FitDigest(digest, 48)}, nil
	}
	return qemu.TEE{Kind: qemu.TEENone}, nil
}

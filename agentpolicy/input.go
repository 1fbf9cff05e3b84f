package agentpolicy

import (
	"encoding/base64"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// Input turns a host request into the policy's input: the request as
// protojson with the proto's field names, the JSON documents it carries as
// bytes (CreateContainer's oci_spec, ExecProcess's process, UpdateContainer's
// resources) parsed, the bytes no rule should see replaced by their size
// (file contents, stdin, initdata: secrets must not reach a policy's
// messages), and guest, the guest's own facts, under "guest".
func Input(req proto.Message, guest map[string]any) (map[string]any, error) {
	// The bytes no rule reads are dropped before encoding, not after: a
	// 32 KiB stdin chunk or a secret volume would otherwise be base64-
	// encoded and decoded on every decision.
	var sizes map[string]int
	var fileSizes []int
	switch r := req.(type) {
	case *agentapi.ProcessIORequest:
		if st, ok := r.GetMsg().(*agentapi.ProcessIORequest_Stdin); ok {
			return map[string]any{"stdin": map[string]any{"size": len(st.Stdin)}, "guest": orEmpty(guest)}, nil
		}
	case *agentapi.CreateSandboxRequest:
		c := &agentapi.CreateSandboxRequest{SandboxId: r.GetSandboxId(), Hostname: r.GetHostname(), DnsServers: r.GetDnsServers(),
			DnsSearches: r.GetDnsSearches(), Interfaces: r.GetInterfaces(), Routes: r.GetRoutes(), SharedFsTag: r.GetSharedFsTag(), Sysctls: r.GetSysctls()}
		sizes = map[string]int{"initdata": len(r.GetInitdata())}
		req = c
	case *agentapi.CreateContainerRequest:
		c := agentapi.CreateContainerRequest{ContainerId: r.GetContainerId(), Image: r.GetImage(), OciSpec: r.GetOciSpec(), MountSources: r.GetMountSources()}
		for _, f := range r.GetFiles() {
			c.Files = append(c.Files, &agentapi.ContainerFile{Path: f.GetPath(), Mode: f.GetMode(), Dir: f.GetDir(), Symlink: f.GetSymlink()})
			fileSizes = append(fileSizes, len(f.GetData()))
		}
		req = &c
	}
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("policy input: %w", err)
	}
	in := map[string]any{}
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, fmt.Errorf("policy input: %w", err)
	}
	for _, k := range []string{"oci_spec", "process", "resources"} {
		if err := parseEmbedded(in, k); err != nil {
			return nil, err
		}
	}
	for k, n := range sizes {
		in[k] = map[string]any{"size": n}
	}
	if files, ok := in["files"].([]any); ok && len(files) == len(fileSizes) {
		for i, f := range files {
			if fm, ok := f.(map[string]any); ok {
				fm["data"] = map[string]any{"size": fileSizes[i]}
			}
		}
	}
	in["guest"] = orEmpty(guest)
	return in, nil
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// parseEmbedded replaces the base64 of a JSON document at in[k] by the
// document; a field that is not JSON is refused (the agent would refuse the
// request anyway).
func parseEmbedded(in map[string]any, k string) error {
	s, ok := in[k].(string)
	if !ok {
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("policy input: %s: %w", k, err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("policy input: %s is not JSON: %w", k, err)
	}
	in[k] = v
	return nil
}

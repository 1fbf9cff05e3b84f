package agentpolicy

import (
	"encoding/base64"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Input turns a host request into the policy's input: the request as
// protojson with the proto's field names, the JSON documents it carries as
// bytes (CreateContainer's oci_spec, ExecProcess's process, UpdateContainer's
// resources) parsed, the bytes no rule should see replaced by their size
// (file contents, stdin, initdata: secrets must not reach a policy's
// messages), and guest, the guest's own facts, under "guest".
func Input(req proto.Message, guest map[string]any) (map[string]any, error) {
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
	for _, k := range []string{"initdata", "stdin"} {
		sizeOf(in, k)
	}
	if files, ok := in["files"].([]any); ok {
		for _, f := range files {
			if fm, ok := f.(map[string]any); ok {
				sizeOf(fm, "data")
			}
		}
	}
	if guest == nil {
		guest = map[string]any{}
	}
	in["guest"] = guest
	return in, nil
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

// sizeOf replaces the base64 bytes at m[k] with {"size": n}.
func sizeOf(m map[string]any, k string) {
	s, ok := m[k].(string)
	if !ok {
		return
	}
	m[k] = map[string]any{"size": base64.StdEncoding.DecodedLen(len(s)) - padding(s)}
}

func padding(s string) int {
	n := 0
	for i := len(s) - 1; i >= 0 && s[i] == '='; i-- {
		n++
	}
	return n
}

package adminapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
)

// Trustee's reference-value message, what its kbs-client posts to
// PathTrusteeReferenceValue (set-sample-reference-value) for its RVPS.
const (
	TrusteeMessageVersion = "0.1.0"
	TrusteeSampleType     = "sample"
)

// TrusteeReferenceValueMessage is the body of POST
// /kbs/v0/reference-value. Payload is standard base64 of a JSON object of
// name -> value, a value being a string, number or bool or a list of them.
type TrusteeReferenceValueMessage struct {
	Version string `json:"version"`
	Type    string `json:"type"`
	Payload string `json:"payload"`
}

// ParseTrusteeReferenceValues turns a Trustee sample message into the
// ReferenceValue requests it amounts to, sorted by name, each checked with
// CheckReferenceValues. A Trustee message cannot mark a name custom, and
// Trustee's RVPS stores any name, so a name the default policy does not
// read is taken as custom; a known name still takes only values shaped
// like its claim. Numbers and bools become their JSON text ("1", "true"):
// Cloak's reference values are strings.
func ParseTrusteeReferenceValues(body []byte) ([]ReferenceValue, error) {
	var msg TrusteeReferenceValueMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&msg); err != nil {
		return nil, fmt.Errorf("body is not a Trustee reference-value message {version, type, payload}: %v", err)
	}
	if msg.Version != TrusteeMessageVersion {
		return nil, fmt.Errorf("message version %q not supported (want %q)", msg.Version, TrusteeMessageVersion)
	}
	if msg.Type != TrusteeSampleType {
		return nil, fmt.Errorf("message type %q not supported: only %q; import signed values with POST %s", msg.Type, TrusteeSampleType, PathReferenceImport)
	}
	raw, err := base64.StdEncoding.DecodeString(msg.Payload)
	if err != nil {
		return nil, fmt.Errorf("payload is not standard base64: %v", err)
	}
	var provenance map[string]json.RawMessage
	if err := json.Unmarshal(raw, &provenance); err != nil || len(provenance) == 0 {
		return nil, fmt.Errorf("payload is not a JSON object of name -> value(s)")
	}
	out := make([]ReferenceValue, 0, len(provenance))
	for name, v := range provenance {
		values, err := trusteeValues(v)
		if err != nil {
			return nil, &ReferenceValueError{Name: name, Index: -1, Problem: err.Error()}
		}
		_, known := KnownReferenceValues[name]
		rv := ReferenceValue{Name: name, Values: values, Custom: !known}
		if err := CheckReferenceValues(rv); err != nil {
			return nil, err
		}
		out = append(out, rv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// trusteeValues flattens one value or a list of values to strings.
func trusteeValues(v json.RawMessage) ([]string, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(v, &list); err != nil {
		list = []json.RawMessage{v}
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		var s string
		if err := json.Unmarshal(e, &s); err == nil {
			out = append(out, s)
			continue
		}
		var scalar any
		dec := json.NewDecoder(bytes.NewReader(e))
		dec.UseNumber()
		if err := dec.Decode(&scalar); err != nil {
			return nil, err
		}
		switch scalar.(type) {
		case json.Number, bool:
			out = append(out, string(bytes.TrimSpace(e)))
		default:
			return nil, fmt.Errorf("value %s is not a string, number or bool", e)
		}
	}
	return out, nil
}

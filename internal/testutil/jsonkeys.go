package testutil

import (
	"encoding"
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
)

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// NonSnakeJSONKeys returns, as "Type.Field: key", the JSON object keys that
// encoding/json gives the structs in types (and the structs they hold, through
// pointers, slices, arrays and map values) that are not snake_case: a
// missing json tag shows as the Go field name (PolicyID). Map keys are data,
// not names, and are not checked.
func NonSnakeJSONKeys(types ...reflect.Type) []string {
	var bad []string
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] || marshalsItself(t) {
			return
		}
		seen[t] = true
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" || !f.IsExported() && !f.Anonymous {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			if f.Anonymous && name == "" {
				walk(f.Type) // embedded: its fields are inlined
				continue
			}
			if name == "" {
				name = f.Name
			}
			if !snakeCase.MatchString(name) {
				bad = append(bad, t.String()+"."+f.Name+": "+name)
			}
			walk(f.Type)
		}
	}
	for _, t := range types {
		walk(t)
	}
	return bad
}

// marshalsItself reports whether t chooses its own JSON (v1.Hash is a
// string), so its fields are no keys.
func marshalsItself(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return p.Implements(reflect.TypeFor[json.Marshaler]()) || p.Implements(reflect.TypeFor[encoding.TextMarshaler]())
}

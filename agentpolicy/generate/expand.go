package generate

import "strings"

// expand is kubelet's $(VAR) expansion (Kubernetes'
// third_party/forked/golang/expansion): $(NAME) becomes the value lookup
// finds, or stays as written when it finds none; $$ is a literal $.
func expand(in string, lookup func(string) (string, bool)) string {
	var b strings.Builder
	checkpoint := 0
	for cursor := 0; cursor < len(in); cursor++ {
		if in[cursor] != '$' || cursor+1 >= len(in) {
			continue
		}
		b.WriteString(in[checkpoint:cursor])
		rest := in[cursor+1:]
		advance := 1
		switch rest[0] {
		case '$':
			b.WriteByte('$')
		case '(':
			end := strings.IndexByte(rest, ')')
			if end < 0 {
				b.WriteString("$(")
				break
			}
			name := rest[1:end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			advance = end + 1
		default:
			b.WriteByte('$')
			b.WriteByte(rest[0])
		}
		cursor += advance
		checkpoint = cursor + 1
	}
	return b.String() + in[checkpoint:]
}

func mapLookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

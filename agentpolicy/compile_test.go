package agentpolicy

import "testing"

// BenchmarkCompile is the once-per-sandbox cost of a generated policy
// (docs/perf.md).
func BenchmarkCompile(b *testing.B) {
	src, _ := Module(demoData())
	for b.Loop() {
		if _, err := Compile(src); err != nil {
			b.Fatal(err)
		}
	}
}

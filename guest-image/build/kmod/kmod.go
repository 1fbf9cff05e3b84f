// Package kmod picks kernel modules out of an unpacked kernel package: it
// reads the modules.dep index that depmod writes, orders a module's
// dependencies before it, and decompresses .ko.xz files so the guest can load
// them with finit_module without in-kernel decompression.
package kmod

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// MaxModuleSize bounds one decompressed module; the largest in Debian's cloud
// kernel is a few MiB.
const MaxModuleSize = 64 << 20

// maxDepLine bounds one modules.dep line.
const maxDepLine = 64 << 10

// Deps is a parsed modules.dep: module name -> its entry.
type Deps map[string]Entry

// Entry is one modules.dep line.
type Entry struct {
	// Path is the module file relative to the modules directory,
	// e.g. kernel/drivers/net/virtio_net.ko.xz.
	Path string
	// Deps are the names of the modules it needs, as depmod lists them.
	Deps []string
}

// Name returns the module name of a module file path the way the kernel
// spells it: base name without .ko[.xz|.zst|.gz], dashes as underscores.
func Name(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ParseDep reads a modules.dep file: one "path: dep-path dep-path..." line
// per module.
func ParseDep(r io.Reader) (Deps, error) {
	deps := Deps{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxDepLine)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, rest, ok := strings.Cut(line, ":")
		if !ok || file == "" {
			return nil, fmt.Errorf("modules.dep line %d: want \"path: deps\", got %q", n, line)
		}
		e := Entry{Path: file}
		for _, d := range strings.Fields(rest) {
			e.Deps = append(e.Deps, Name(d))
		}
		deps[Name(file)] = e
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return deps, nil
}

// Resolve returns the entries for the wanted modules and everything they
// depend on, each dependency before the modules that need it, each module
// once. The order depends only on wanted and deps, so builds are repeatable.
func (d Deps) Resolve(wanted []string) ([]Entry, error) {
	var out []Entry
	state := map[string]int{} // 1 = visiting, 2 = done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		e, ok := d[name]
		if !ok {
			if len(chain) == 0 {
				return fmt.Errorf("module %q is not in modules.dep (built in, or not built by this kernel config?)", name)
			}
			return fmt.Errorf("module %q, needed by %s, is not in modules.dep", name, chain[len(chain)-1])
		}
		state[name] = 1
		for _, dep := range e.Deps {
			if err := visit(dep, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, e)
		return nil
	}
	for _, w := range wanted {
		if err := visit(Name(w), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Load reads the module at rel under modulesDir, decompressing .ko.xz.
// Other compressions are refused so that a kernel package built differently
// fails loudly here instead of at finit_module time in the guest.
func Load(modulesDir, rel string) ([]byte, error) {
	if !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("module path %q leaves the modules directory", rel)
	}
	f, err := os.Open(filepath.Join(modulesDir, rel))
	if err != nil {
		return nil, fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(rel, ".ko"):
	case strings.HasSuffix(rel, ".ko.xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("module %s: xz: %w", rel, err)
		}
		r = xr
	default:
		return nil, fmt.Errorf("module %s: unsupported compression (want .ko or .ko.xz)", rel)
	}
	b, err := io.ReadAll(io.LimitReader(r, MaxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("module %s: decompress: %w", rel, err)
	}
	if len(b) > MaxModuleSize {
		return nil, fmt.Errorf("module %s: larger than %d bytes", rel, MaxModuleSize)
	}
	if !bytes.HasPrefix(b, []byte("\x7fELF")) {
		return nil, fmt.Errorf("module %s: not an ELF object", rel)
	}
	return b, nil
}

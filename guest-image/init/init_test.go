package guestinit

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloak-containers/cloak/internal/testutil"
)

func TestLoadModules(t *testing.T) {
	tests := []struct {
		name     string
		list     *string
		loadErr  map[string]error
		want     []string
		wantErr  string
		wantLoad []string
	}{
		{name: "no list", list: nil},
		{name: "in order", list: ptr("# deps first\nfailover\nnet_failover\n\nvirtio_net\n"), want: []string{"failover", "net_failover", "virtio_net"},
			wantLoad: []string{"failover.ko", "net_failover.ko", "virtio_net.ko"}},
		{name: "file names as the image builder writes them", list: ptr("failover.ko\nvirtio_net.ko\n"), want: []string{"failover", "virtio_net"},
			wantLoad: []string{"failover.ko", "virtio_net.ko"}},
		{name: "already loaded", list: ptr("overlay\n"), loadErr: map[string]error{"overlay.ko": unix.EEXIST}, want: []string{"overlay"}, wantLoad: []string{"overlay.ko"}},
		{name: "load fails", list: ptr("a\nb\n"), loadErr: map[string]error{"a.ko": unix.ENOEXEC}, wantErr: "load module a", wantLoad: []string{"a.ko"}},
		{name: "bad name", list: ptr("../../etc/x\n"), wantErr: "line 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.list != nil {
				os.WriteFile(filepath.Join(dir, "load.list"), []byte(*tc.list), 0o644)
			}
			var loaded []string
			got, err := LoadModules(dir, func(p string) error {
				if filepath.Dir(p) != dir {
					t.Errorf("module path %s outside %s", p, dir)
				}
				loaded = append(loaded, filepath.Base(p))
				return tc.loadErr[filepath.Base(p)]
			})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
			} else if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("LoadModules = %v, %v; want %v", got, err, tc.want)
			}
			if !reflect.DeepEqual(loaded, tc.wantLoad) {
				t.Errorf("loaded %v, want %v", loaded, tc.wantLoad)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestV1Hierarchies(t *testing.T) {
	procCgroups := `#subsys_name	hierarchy	num_cgroups	enabled
cpuset	0	1	1
cpu	0	1	1
cpuacct	0	1	1
blkio	0	1	1
memory	0	1	1
devices	0	1	1
freezer	0	1	1
net_cls	0	1	1
perf_event	0	1	1
net_prio	0	1	1
hugetlb	0	1	0
pids	0	1	1
`
	want := []string{"cpuset", "cpu,cpuacct", "blkio", "memory", "devices", "freezer", "net_cls,net_prio", "perf_event", "pids"}
	if got := V1Hierarchies([]byte(procCgroups)); !reflect.DeepEqual(got, want) {
		t.Errorf("V1Hierarchies = %v, want %v", got, want)
	}
	if !hasFilesystem([]byte("nodev\tsysfs\nnodev\tcgroup\nnodev\tcgroup2\n"), "cgroup2") || hasFilesystem([]byte("nodev\tcgroup\n"), "cgroup2") {
		t.Error("hasFilesystem misreads /proc/filesystems")
	}
}

func fakePorts(t testing.TB, ports map[string]string) (sys, dev string) {
	// On tmpfs: FuzzLinkVirtioPorts makes two directory trees per input.
	sys, dev = testutil.MemTempDir(t), testutil.MemTempDir(t)
	for p, name := range ports {
		d := filepath.Join(sys, "class", "virtio-ports", p)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "name"), []byte(name), 0o644)
	}
	return sys, dev
}

func TestLinkVirtioPorts(t *testing.T) {
	sys, dev := fakePorts(t, map[string]string{"vport0p1": "cloak.agent\n", "vport0p2": "", "vport0p3": "../../etc/evil", "vport1p1": "org.qemu.guest_agent.0"})
	got, err := LinkVirtioPorts(sys, dev)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"cloak.agent", "org.qemu.guest_agent.0"}; !reflect.DeepEqual(got, want) {
		t.Errorf("linked %v, want %v", got, want)
	}
	if target, err := os.Readlink(filepath.Join(dev, "virtio-ports", "cloak.agent")); err != nil || target != "../vport0p1" {
		t.Errorf("cloak.agent -> %q, %v", target, err)
	}
	entries, _ := os.ReadDir(filepath.Join(dev, "virtio-ports"))
	if len(entries) != 2 {
		t.Errorf("links = %v", entries)
	}
	// Running again (Setup after a restart) keeps the links.
	if _, err := LinkVirtioPorts(sys, dev); err != nil {
		t.Errorf("second run: %v", err)
	}
	if got, err := LinkVirtioPorts(t.TempDir(), dev); err != nil || got != nil {
		t.Errorf("no virtio-ports class = %v, %v; want nothing", got, err)
	}
}

// FuzzLinkVirtioPorts: port names come from the host; no link may land
// outside /dev/virtio-ports.
func FuzzLinkVirtioPorts(f *testing.F) {
	f.Add("cloak.agent")
	f.Add("../x")
	f.Fuzz(func(t *testing.T, name string) {
		sys, dev := fakePorts(t, map[string]string{"vport0p1": name})
		LinkVirtioPorts(sys, dev) // an error is fine; a stray link is not
		filepath.Walk(dev, func(p string, info os.FileInfo, err error) error {
			if err == nil && p != dev && filepath.Dir(p) != filepath.Join(dev, "virtio-ports") && p != filepath.Join(dev, "virtio-ports") {
				t.Fatalf("link created at %s", p)
			}
			return nil
		})
	})
}

func FuzzParseModuleList(f *testing.F) {
	f.Add([]byte("a\n# c\nb_c-d\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		names, err := ParseModuleList(b)
		if err != nil {
			return
		}
		for _, n := range names {
			if strings.ContainsAny(n, "/.") || n == "" {
				t.Fatalf("accepted module name %q", n)
			}
		}
	})
}

func TestSetReadahead(t *testing.T) {
	sys := t.TempDir()
	queue := filepath.Join(sys, "dev", "block", "254:0", "queue")
	if err := os.MkdirAll(queue, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(queue, "read_ahead_kb"), []byte("128\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kb, err := setReadahead(unix.Mkdev(254, 0), sys)
	if err != nil || kb != RootReadaheadKiB {
		t.Fatalf("setReadahead = %d, %v; want %d", kb, err, RootReadaheadKiB)
	}
	if b, _ := os.ReadFile(filepath.Join(queue, "read_ahead_kb")); string(b) != "4096" {
		t.Errorf("read_ahead_kb holds %q, want 4096", b)
	}
	// A root in memory has no queue to tune.
	if kb, err := setReadahead(unix.Mkdev(0, 33), sys); kb != 0 || err != nil {
		t.Errorf("tmpfs root: %d, %v; want 0, nil", kb, err)
	}
	// A device sysfs does not know is an error that names the file.
	if _, err := setReadahead(unix.Mkdev(8, 1), sys); err == nil || !strings.Contains(err.Error(), "8:1/queue/read_ahead_kb") {
		t.Errorf("unknown device: %v, want an error naming its read_ahead_kb", err)
	}
}

package task

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestPodNetNS(t *testing.T) {
	tests := []struct {
		name string
		spec specs.Spec
		want string
	}{
		{name: "no linux section", spec: specs.Spec{}},
		{name: "own netns", spec: specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace}}}}},
		{name: "pod netns", want: "/var/run/netns/cni-1",
			spec: specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UTSNamespace, Path: "/proc/1/ns/uts"}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := podNetNS(&tt.spec); got != tt.want {
				t.Errorf("podNetNS = %q, want %q", got, tt.want)
			}
		})
	}
}

// A pod's sysctls: net.* were set in the guest for the pod network (and
// leave container specs that drop the netns path), the sandbox's IPC ones
// go into every container, whose own values win.
func TestGuestSpecSysctls(t *testing.T) {
	sandbox := specs.Spec{Linux: &specs.Linux{Sysctl: map[string]string{"net.core.somaxconn": "100", "kernel.shm_rmid_forced": "1"}}}
	netSysctls, other := splitSysctls(&sandbox)
	if !reflect.DeepEqual(netSysctls, map[string]string{"net.core.somaxconn": "100"}) || !reflect.DeepEqual(other, map[string]string{"kernel.shm_rmid_forced": "1"}) {
		t.Fatalf("splitSysctls = %v, %v", netSysctls, other)
	}
	ctr := specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Linux: &specs.Linux{
		Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/p"}, {Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}},
		Sysctl:     map[string]string{"kernel.msgmax": "10000", "kernel.shm_rmid_forced": "0", "net.ipv4.ip_forward": "1"},
	}}
	raw, err := json.Marshal(&ctr)
	if err != nil {
		t.Fatal(err)
	}
	out, err := guestSpec(raw, &ctr, other)
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"kernel.msgmax": "10000", "kernel.shm_rmid_forced": "0"}
	if !reflect.DeepEqual(got.Linux.Sysctl, want) {
		t.Errorf("container sysctls %v, want %v", got.Linux.Sysctl, want)
	}
	// Without namespace paths, only the pod's sysctls force a rewrite.
	own := specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace}}}}
	raw, _ = json.Marshal(&own)
	out, err = guestSpec(raw, &own, map[string]string{"kernel.sem": "250 32000 32 128"})
	if err != nil {
		t.Fatal(err)
	}
	got = specs.Spec{}
	if err := json.Unmarshal(out, &got); err != nil || got.Linux.Sysctl["kernel.sem"] != "250 32000 32 128" {
		t.Errorf("pod IPC sysctl not in a container without namespace paths: %v (%v)", got.Linux.Sysctl, err)
	}
}

func TestGuestSpec(t *testing.T) {
	own := specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace}}}}
	pod := specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/p"}, {Type: specs.PIDNamespace}}}}
	cri := specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.PIDNamespace, Path: "/proc/42/ns/pid"}, {Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"},
		{Type: specs.UTSNamespace, Path: "/proc/42/ns/uts"}, {Type: specs.MountNamespace},
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
	}}}
	tests := []struct {
		name      string
		spec      specs.Spec
		wantTypes []specs.LinuxNamespaceType
		same      bool // the raw bytes go through untouched
	}{
		{name: "own netns is kept", spec: own, same: true, wantTypes: []specs.LinuxNamespaceType{specs.MountNamespace, specs.NetworkNamespace}},
		{name: "pod netns is dropped", spec: pod, wantTypes: []specs.LinuxNamespaceType{specs.MountNamespace, specs.PIDNamespace}},
		{name: "CRI container: the pause process's namespaces become fresh ones", spec: cri,
			wantTypes: []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := json.Marshal(&tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			before := len(tt.spec.Linux.Namespaces)
			out, err := guestSpec(raw, &tt.spec, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.same != (string(out) == string(raw)) {
				t.Errorf("raw spec passed through: %v, want %v", !tt.same, tt.same)
			}
			var got specs.Spec
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			var types []specs.LinuxNamespaceType
			for _, ns := range got.Linux.Namespaces {
				if ns.Path != "" {
					t.Errorf("namespace %s keeps path %q", ns.Type, ns.Path)
				}
				types = append(types, ns.Type)
			}
			if !reflect.DeepEqual(types, tt.wantTypes) {
				t.Errorf("namespaces %v, want %v", types, tt.wantTypes)
			}
			if len(tt.spec.Linux.Namespaces) != before {
				t.Errorf("the shim's own spec was modified")
			}
		})
	}
}

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name                    string
		in                      string
		wantServers, wantSearch []string
		wantErr                 bool
	}{
		{name: "empty"},
		{name: "CRI style", in: "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
			wantServers: []string{"10.96.0.10"}, wantSearch: []string{"ns.svc.cluster.local", "svc.cluster.local"}},
		{name: "comments, IPv6, last search wins", in: "# generated\n; old\nnameserver 1.1.1.1\nnameserver  2001:db8::1\nsearch a\ndomain b\n",
			wantServers: []string{"1.1.1.1", "2001:db8::1"}, wantSearch: []string{"b"}},
		{name: "more than three servers are dropped", in: "nameserver 1.1.1.1\nnameserver 1.1.1.2\nnameserver 1.1.1.3\nnameserver 1.1.1.4\n",
			wantServers: []string{"1.1.1.1", "1.1.1.2", "1.1.1.3"}},
		{name: "server not an IP", in: "nameserver dns.example\n", wantErr: true},
		{name: "too many search domains", in: "search a b c d e f g\n", wantErr: true},
		{name: "too large", in: strings.Repeat("#\n", maxResolvConfSize), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servers, search, err := parseResolvConf(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(servers, tt.wantServers) || !reflect.DeepEqual(search, tt.wantSearch) {
				t.Errorf("servers %q search %q, want %q %q", servers, search, tt.wantServers, tt.wantSearch)
			}
		})
	}
}

func TestPodDNS(t *testing.T) {
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nsearch svc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		mounts      []specs.Mount
		wantServers []string
		wantErr     bool
	}{
		{name: "no resolv.conf mount", mounts: []specs.Mount{{Destination: "/etc/hosts", Source: resolv}}},
		{name: "resolv.conf mount", mounts: []specs.Mount{{Destination: "/etc/resolv.conf", Source: resolv, Type: "bind"}}, wantServers: []string{"10.96.0.10"}},
		{name: "missing source", mounts: []specs.Mount{{Destination: "/etc/resolv.conf", Source: resolv + ".gone"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servers, _, err := podDNS(&specs.Spec{Mounts: tt.mounts})
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(servers, tt.wantServers) {
				t.Errorf("servers %q, want %q", servers, tt.wantServers)
			}
		})
	}
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add("search a b\nnameserver 10.0.0.1\noptions ndots:5\n")
	f.Add("nameserver ::1\n#x\n;y\ndomain z\n")
	f.Fuzz(func(t *testing.T, in string) {
		servers, search, err := parseResolvConf(strings.NewReader(in))
		if err != nil {
			return
		}
		if len(servers) > maxDNSServers || len(search) > maxDNSSearches {
			t.Fatalf("limits exceeded: %d servers, %d searches", len(servers), len(search))
		}
	})
}

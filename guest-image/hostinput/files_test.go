package hostinput

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/agentapi"
)

// kubeletFiles is a configMap volume as the host copies it: kubelet's
// atomic-writer layout under m1, and a single file m0.
func kubeletFiles() []*agentapi.ContainerFile {
	return []*agentapi.ContainerFile{
		{Path: "m0", Mode: 0o644, Data: []byte("10.0.0.5 web\n")},
		{Path: "m1", Mode: 0o755, Dir: true},
		{Path: "m1/..2026_11_27", Mode: 0o755, Dir: true},
		{Path: "m1/..2026_11_27/app.conf", Mode: 0o600, Data: []byte("a=1\n")},
		{Path: "m1/..data", Mode: 0o777, Symlink: "..2026_11_27"},
		{Path: "m1/app.conf", Mode: 0o777, Symlink: "..data/app.conf"},
	}
}

func TestContainerFiles(t *testing.T) {
	if err := ContainerFiles(kubeletFiles()); err != nil {
		t.Fatalf("kubelet layout refused: %v", err)
	}
	tests := []struct {
		name   string
		files  []*agentapi.ContainerFile
		reason string
	}{
		{"absolute path", []*agentapi.ContainerFile{{Path: "/etc/passwd"}}, agentapi.ReasonInvalidRequest},
		{"dot dot", []*agentapi.ContainerFile{{Path: "../x"}}, agentapi.ReasonInvalidRequest},
		{"unclean", []*agentapi.ContainerFile{{Path: "m0//x"}}, agentapi.ReasonInvalidRequest},
		{"empty", []*agentapi.ContainerFile{{Path: ""}}, agentapi.ReasonInvalidRequest},
		{"twice", []*agentapi.ContainerFile{{Path: "m0"}, {Path: "m0"}}, agentapi.ReasonInvalidRequest},
		{"dir with data", []*agentapi.ContainerFile{{Path: "m0", Dir: true, Data: []byte("x")}}, agentapi.ReasonInvalidRequest},
		{"link up", []*agentapi.ContainerFile{{Path: "m0/l", Symlink: "../../etc"}}, agentapi.ReasonPolicy},
		{"absolute link", []*agentapi.ContainerFile{{Path: "m0/l", Symlink: "/etc/shadow"}}, agentapi.ReasonPolicy},
		{"link through dot dot", []*agentapi.ContainerFile{{Path: "m0/l", Symlink: "..data/../../x"}}, agentapi.ReasonPolicy},
		{"too many", make([]*agentapi.ContainerFile, maxContainerFiles+1), agentapi.ReasonInvalidRequest},
		{"too large", []*agentapi.ContainerFile{{Path: "a", Data: make([]byte, maxFilesBytes)}, {Path: "b", Data: []byte("x")}}, agentapi.ReasonInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ContainerFiles(tt.files); reasonOf(err) != tt.reason {
				t.Errorf("got %v (reason %q), want reason %s", err, reasonOf(err), tt.reason)
			}
		})
	}
}

func TestMountSources(t *testing.T) {
	good := &agentapi.CreateContainerRequest{
		Files: kubeletFiles(),
		MountSources: []*agentapi.MountSource{
			{MountIndex: 1, Source: &agentapi.MountSource_Files{Files: "m0"}},
			{MountIndex: 2, Source: &agentapi.MountSource_Files{Files: "m1"}},
			{MountIndex: 3, Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_EMPTY_DIR, Pod: "pod1", Volume: "cache"}}},
			{MountIndex: 4, Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_SHM, Pod: "pod1"}}},
			{MountIndex: 5, Source: &agentapi.MountSource_Shared{Shared: "c1/m3"}},
		},
	}
	if err := MountSources(good); err != nil {
		t.Fatal(err)
	}
	src := func(s *agentapi.MountSource) *agentapi.CreateContainerRequest {
		return &agentapi.CreateContainerRequest{Files: kubeletFiles(), MountSources: []*agentapi.MountSource{s}}
	}
	tests := []struct {
		name string
		req  *agentapi.CreateContainerRequest
		code codes.Code
	}{
		{"files source not copied", src(&agentapi.MountSource{Source: &agentapi.MountSource_Files{Files: "m9"}}), codes.InvalidArgument},
		{"files source escaping", src(&agentapi.MountSource{Source: &agentapi.MountSource_Files{Files: "../../sandbox"}}), codes.InvalidArgument},
		{"pod id with slash", src(&agentapi.MountSource{Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_SHM, Pod: "../x"}}}), codes.InvalidArgument},
		{"volume name with slash", src(&agentapi.MountSource{Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Kind: agentapi.GuestDir_KIND_EMPTY_DIR, Pod: "p", Volume: "a/b"}}}), codes.InvalidArgument},
		{"guest dir without kind", src(&agentapi.MountSource{Source: &agentapi.MountSource_GuestDir{GuestDir: &agentapi.GuestDir{Pod: "p"}}}), codes.InvalidArgument},
		{"no source", src(&agentapi.MountSource{}), codes.InvalidArgument},
		{"index twice", &agentapi.CreateContainerRequest{Files: kubeletFiles(), MountSources: []*agentapi.MountSource{good.MountSources[0], good.MountSources[0]}}, codes.InvalidArgument},
		{"shared escaping", src(&agentapi.MountSource{Source: &agentapi.MountSource_Shared{Shared: "../x"}}), codes.InvalidArgument},
		{"too many", &agentapi.CreateContainerRequest{MountSources: make([]*agentapi.MountSource, maxMountSources+1)}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := MountSources(tt.req); status.Code(err) != tt.code {
				t.Errorf("got %v, want code %v", err, tt.code)
			}
		})
	}
}

func TestFSTag(t *testing.T) {
	for tag, ok := range map[string]bool{"": true, "cloak-share_1.x": true, "a/b": false, "a b": false, "x\x00": false} {
		if err := FSTag(tag); (err == nil) != ok {
			t.Errorf("FSTag(%q) = %v, want ok=%v", tag, err, ok)
		}
	}
}

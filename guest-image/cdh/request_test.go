package cdh

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

func TestParseRequest(t *testing.T) {
	for _, tt := range []struct {
		method, target string
		want           Request
		status         int
	}{
		{"GET", "/cdh/resource/default/app/db-password", Request{EndpointResource, kbstypes.ResourcePath{Repository: "default", Type: "app", Tag: "db-password"}}, 0},
		{"GET", "/aa/token?token_type=kbs", Request{Endpoint: EndpointToken}, 0},
		{"HEAD", "/aa/token?token_type=kbs", Request{}, 405},
		{"GET", "/aa/token", Request{}, 400},
		{"GET", "/aa/token?token_type=kbs&x=1", Request{}, 400},
		{"GET", "/cdh/resource//app/x/y", Request{}, 400},
		{"GET", "/cdh/resource/a/b/", Request{}, 400},
		{"GET", "/cdh/resource/a/./b", Request{}, 400},
		{"GET", "/cdh/resource/a/b/c#frag", Request{}, 400},
		{"GET", "/cdh/resource/a/b/c%00", Request{}, 400},
		{"GET", "/cdh/resource/a\\b/c/d", Request{}, 400},
		{"GET", "/cdh/resource/a/b/c?", Request{}, 400},
		{"GET", "http://127.0.0.1:8006/cdh/resource/a/b/c", Request{}, 404},
		{"GET", "*", Request{}, 404},
		{"GET", "/CDH/resource/a/b/c", Request{}, 404},
		{"GET", "/cdh/resource/" + strings.Repeat("x", 129) + "/b/c", Request{}, 400},
		{"GET", strings.Repeat("/", MaxRequestURI+1), Request{}, 414},
	} {
		got, err := ParseRequest(tt.method, tt.target)
		var re *RequestError
		switch {
		case tt.status == 0 && err != nil:
			t.Errorf("%s %q: %v", tt.method, tt.target, err)
		case tt.status == 0 && got != tt.want:
			t.Errorf("%s %q = %+v, want %+v", tt.method, tt.target, got, tt.want)
		case tt.status != 0 && (!errors.As(err, &re) || re.Status != tt.status):
			t.Errorf("%s %q: %v; want status %d", tt.method, tt.target, err, tt.status)
		}
	}
}

// FuzzParseRequest: whatever a container sends, an accepted request is one
// of the two endpoints with a path the KBS accepts, the target is
// rebuilt exactly from it (nothing was skipped or decoded), and a refusal
// is a 4xx whose reason is bounded.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"/cdh/resource/default/app/db-password", "/aa/token?token_type=kbs", "/cdh/resource/a/../b",
		"/cdh/resource/a%2fb/c/d", "/cdh/resource/a/b/c?x", "/aa/token?token_type=kbs#", "//cdh/resource/a/b/c",
	} {
		f.Add("GET", s)
	}
	f.Add("POST", "/aa/token?token_type=kbs")
	f.Fuzz(func(t *testing.T, method, target string) {
		r, err := ParseRequest(method, target)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) || re.Status < 400 || re.Status > 499 {
				t.Fatalf("refusal %v is not a 4xx RequestError", err)
			}
			if len(re.Reason) > 400 {
				t.Fatalf("reason of %d bytes", len(re.Reason))
			}
			return
		}
		if method != http.MethodGet || len(target) > MaxRequestURI {
			t.Fatalf("accepted %s of %d bytes", method, len(target))
		}
		switch r.Endpoint {
		case EndpointResource:
			if _, err := kbstypes.ParseResourcePath(r.Resource.String()); err != nil {
				t.Fatalf("accepted resource %q the KBS refuses: %v", r.Resource, err)
			}
			if target != "/cdh/resource/"+r.Resource.String() {
				t.Fatalf("target %q parsed as %q", target, r.Resource)
			}
		case EndpointToken:
			if target != "/aa/token?token_type=kbs" {
				t.Fatalf("target %q parsed as the token", target)
			}
		default:
			t.Fatalf("accepted %q as endpoint %d", target, r.Endpoint)
		}
	})
}

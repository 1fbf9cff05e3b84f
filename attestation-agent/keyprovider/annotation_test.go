package keyprovider

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

func TestParseAnnotation(t *testing.T) {
	const iv = "AAAAAAAAAAAAAAAA" // 12 bytes
	tests := []struct {
		name     string
		in       string
		wantPath string
		wantErr  string
	}{
		{"valid", `{"kid":"kbs:///default/key/1","wrapped_data":"AQID","iv":"` + iv + `","wrap_type":"A256GCM"}`, "default/key/1", ""},
		{"valid with host hint", `{"kid":"kbs://kbs.example:8080/default/key/1","wrapped_data":"AQID","iv":"` + iv + `","wrap_type":"A256GCM"}`, "default/key/1", ""},
		{"base64 of JSON", base64.StdEncoding.EncodeToString([]byte(`{"kid":"kbs:///r/t/x","wrapped_data":"AQID","iv":"` + iv + `","wrap_type":"A256GCM"}`)), "r/t/x", ""},
		{"empty", ``, "", "annotation: want"},
		{"not base64", `%%%`, "", "neither JSON nor base64"},
		{"kid not kbs", `{"kid":"https://x/a/b/c","wrapped_data":"AQID","iv":"` + iv + `","wrap_type":"A256GCM"}`, "", "annotation kid"},
		{"kid escapes", `{"kid":"kbs:///../b/c","wrapped_data":"AQID","iv":"` + iv + `","wrap_type":"A256GCM"}`, "", "annotation kid"},
		{"wrap type", `{"kid":"kbs:///a/b/c","wrapped_data":"AQID","iv":"` + iv + `","wrap_type":"A256CTR"}`, "", `wrap_type "A256CTR" not supported`},
		{"short iv", `{"kid":"kbs:///a/b/c","wrapped_data":"AQID","iv":"AAAA","wrap_type":"A256GCM"}`, "", "iv is 3 bytes"},
		{"no data", `{"kid":"kbs:///a/b/c","wrapped_data":"","iv":"` + iv + `","wrap_type":"A256GCM"}`, "", "wrapped_data is empty"},
		{"unknown field", `{"kid":"kbs:///a/b/c","extra":1}`, "", "unknown field"},
		{"trailing data", `{"kid":"kbs:///a/b/c","wrapped_data":"AQID","iv":"` + iv + `","wrap_type":"A256GCM"}{}`, "", "trailing data"},
		{"oversized", `{"kid":"` + strings.Repeat("a", MaxAnnotation) + `"}`, "", "limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := ParseAnnotation([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if path.String() != tc.wantPath {
				t.Errorf("path = %s, want %s", path, tc.wantPath)
			}
		})
	}
}

func FuzzParseAnnotation(f *testing.F) {
	f.Add([]byte(`{"kid":"kbs:///default/key/1","wrapped_data":"AQID","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}`))
	f.Add([]byte(base64.StdEncoding.EncodeToString([]byte(`{"kid":"kbs:///a/b/c"}`))))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, path, err := ParseAnnotation(b)
		if err != nil {
			return
		}
		// Whatever is accepted must be usable as is.
		if a.WrapType != WrapTypeA256GCM || len(a.IV) != gcmNonceSize || len(a.WrappedData) == 0 {
			t.Fatalf("accepted unusable annotation %+v", a)
		}
		if _, err := kbstypes.ParseResourcePath(path.String()); err != nil {
			t.Fatalf("accepted invalid resource path %q: %v", path, err)
		}
	})
}

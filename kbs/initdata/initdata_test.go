package initdata

import (
	"crypto/sha256"
	"crypto/sha512"
	"os"
	"strings"
	"testing"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

func TestParse(t *testing.T) {
	body, err := os.ReadFile("testdata/initdata.toml")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(&kbstypes.InitData{Format: "toml", Body: string(body)})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha512.Sum384(body)
	if string(d.Digest) != string(sum[:]) || d.Algorithm != "sha384" || d.Version != "0.1.0" {
		t.Fatalf("doc = %+v", d)
	}
	if _, ok := d.Data["policy.rego"].(string); !ok {
		t.Fatalf("data table not parsed: %v", d.Data)
	}

	d, err = Parse(&kbstypes.InitData{Format: "toml", Body: "algorithm = \"sha256\"\n"})
	if err != nil {
		t.Fatal(err)
	}
	sum256 := sha256.Sum256([]byte("algorithm = \"sha256\"\n"))
	if string(d.Digest) != string(sum256[:]) || d.Data != nil {
		t.Fatalf("sha256 doc = %+v", d)
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name string
		in   kbstypes.InitData
		want string
	}{
		{"json format", kbstypes.InitData{Format: "json", Body: "{}"}, `format "json"`},
		{"bad toml", kbstypes.InitData{Format: "toml", Body: "version = "}, "not valid TOML"},
		{"md5", kbstypes.InitData{Format: "toml", Body: `algorithm = "md5"`}, `algorithm "md5"`},
		{"huge", kbstypes.InitData{Format: "toml", Body: strings.Repeat("#", MaxBodySize+1)}, "limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(&tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\nx = \"y\"\n")
	f.Add("algorithm = 3")
	f.Fuzz(func(t *testing.T, body string) {
		d, err := Parse(&kbstypes.InitData{Format: "toml", Body: body})
		if err == nil && len(d.Digest) < 32 {
			t.Fatalf("digest too short: %x", d.Digest)
		}
	})
}

package keywrap

import (
	"strings"
	"testing"
)

func TestParseParams(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Params
		wantErr string
	}{
		{name: "cloak form", in: "keypath=/k/kek;kid=kbs:///default/key/1",
			want: Params{KeyPath: "/k/kek", KID: "kbs:///default/key/1"}},
		{name: "cloak form, reversed, trailing separator", in: "kid=kbs:///a/b/c;keypath=/kek;",
			want: Params{KeyPath: "/kek", KID: "kbs:///a/b/c"}},
		{name: "coco form", in: "keypath=/k/kek::keyid=kbs:///default/key/1::algorithm=A256GCM",
			want: Params{KeyPath: "/k/kek", KID: "kbs:///default/key/1"}},
		{name: "coco form, sample=false", in: "sample=false::keypath=/k::keyid=kbs:///a/b/c",
			want: Params{KeyPath: "/k", KID: "kbs:///a/b/c"}},
		{name: "value containing =", in: "keypath=/k/a=b;kid=kbs:///a/b/c",
			want: Params{KeyPath: "/k/a=b", KID: "kbs:///a/b/c"}},
		{name: "empty", in: "", wantErr: "missing keypath"},
		{name: "missing kid", in: "keypath=/k", wantErr: "missing kid"},
		{name: "missing keypath", in: "kid=kbs:///a/b/c", wantErr: "missing keypath"},
		{name: "not key=value", in: "keypath=/k;kbs:///a/b/c", wantErr: "want key=value"},
		{name: "unknown key", in: "keypath=/k;kid=kbs:///a/b/c;kms=aliyun", wantErr: `unknown provider parameter "kms"`},
		{name: "duplicate", in: "keypath=/k;kid=kbs:///a/b/c;keypath=/j", wantErr: "given twice"},
		{name: "kid and keyid both", in: "keypath=/k;kid=kbs:///a/b/c;keyid=kbs:///d/e/f", wantErr: "given twice"},
		{name: "CTR algorithm", in: "keypath=/k::keyid=kbs:///a/b/c::algorithm=A256CTR", wantErr: "only A256GCM"},
		{name: "sample key", in: "sample=true", wantErr: "hard-coded key is not supported"},
		{name: "too long", in: "keypath=" + strings.Repeat("a", MaxParamsSize), wantErr: "more than the 4096 allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseParams(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseParams(f *testing.F) {
	for _, seed := range []string{
		"keypath=/k/kek;kid=kbs:///default/key/1",
		"keypath=/k::keyid=kbs:///a/b/c::algorithm=A256GCM",
		"sample=true", ";;", "::", "=;=", "keypath=;kid=",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseParams(s)
		if err != nil {
			return
		}
		if p.KeyPath == "" || p.KID == "" {
			t.Fatalf("accepted %q without keypath or kid: %+v", s, p)
		}
		if len(s) > MaxParamsSize {
			t.Fatalf("accepted %d bytes", len(s))
		}
	})
}

package testutil

import (
	"reflect"
	"slices"
	"testing"
)

func TestNonSnakeJSONKeys(t *testing.T) {
	type inner struct {
		OK    bool `json:"ok"`
		Camel int  `json:"camelCase"`
	}
	type Embedded struct {
		Kind string `json:"kind"`
		Bad  string
	}
	type outer struct {
		Embedded
		PolicyID string           `json:"policy_id,omitempty"`
		Untagged string           // encoded as "Untagged"
		Skipped  string           `json:"-"`
		Findings []inner          `json:"findings"`
		ByName   map[string]inner `json:"by_name"` // keys are data, values are checked
		hidden   string
	}
	_ = outer{}.hidden
	got := NonSnakeJSONKeys(reflect.TypeFor[outer]())
	want := []string{
		"testutil.Embedded.Bad: Bad",
		"testutil.outer.Untagged: Untagged",
		"testutil.inner.Camel: camelCase",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("NonSnakeJSONKeys = %q, want %q", got, want)
	}
}

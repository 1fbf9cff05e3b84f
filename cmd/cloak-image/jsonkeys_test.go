package main

import (
	"reflect"
	"testing"

	"github.com/cloak-containers/cloak/guest-image/build"
	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/measurements/launch"
)

// TestJSONKeysSnakeCase: every key of what -o json prints is snake_case.
func TestJSONKeysSnakeCase(t *testing.T) {
	for _, bad := range testutil.NonSnakeJSONKeys(reflect.TypeFor[build.Manifest](), reflect.TypeFor[launch.Result]()) {
		t.Errorf("JSON key not snake_case: %s", bad)
	}
}

package main

import (
	"reflect"
	"testing"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/internal/testutil"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbs/imagecrypt"
)

// TestJSONKeysSnakeCase: every key of what -o json prints is snake_case
// (a struct without json tags would print Go names such as PolicyID).
func TestJSONKeysSnakeCase(t *testing.T) {
	printed := []reflect.Type{
		reflect.TypeFor[evidenceResult](), // evidence verify
		reflect.TypeFor[explainedEntry](), // audit
		reflect.TypeFor[adminclient.Policy](),
		reflect.TypeFor[adminapi.ReferenceValues](),
		reflect.TypeFor[adminapi.ImportResult](),
		reflect.TypeFor[adminapi.ResourceInfo](),
		reflect.TypeFor[adminapi.ResourceList](),
		reflect.TypeFor[imagecrypt.Result](),
	}
	for _, bad := range testutil.NonSnakeJSONKeys(printed...) {
		t.Errorf("JSON key not snake_case: %s", bad)
	}
}

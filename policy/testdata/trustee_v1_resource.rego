# A Trustee-style resource policy in Rego v1 syntax: allow whenever every
# submodule's status is affirming (sample TEE included).
package policy

import rego.v1

default allow := false

allow if {
	count(input.submods) > 0
	not any_not_affirming
}

any_not_affirming if {
	some submod in input.submods
	submod["ear.status"] != "affirming"
}

# A Trustee-style attestation policy in the older Rego v0 syntax (no `if`,
# `=` for defaults), as older Trustee documentation shows.
package policy

default executables = 33

default hardware = 97

executables = 3 {
	input.sample.launch_digest == data.reference.launch_digest[_]
}

hardware = 2 {
	input.sample.svn == data.reference.svn[_]
}

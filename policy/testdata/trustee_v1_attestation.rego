# A Trustee-style attestation policy in Rego v1 syntax: rules named after the
# AR4SI claims, input.<tee>.<claim>, reference values in data.reference, and
# no Cloak `findings` rule.
package policy

import rego.v1

default executables := 33

default hardware := 97

default configuration := 36

default file_system := 0

executables := 3 if {
	input.sample
	input.sample.launch_digest in data.reference.launch_digest
}

hardware := 2 if {
	input.sample
	input.sample.svn in data.reference.svn
	input.sample.platform_version.major == data.reference.major_version
}

trust_claims := {
	"executables": executables,
	"hardware": hardware,
}

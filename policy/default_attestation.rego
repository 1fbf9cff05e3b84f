# Cloak's default attestation policy: what a fresh KBS uses until an admin
# sets another one (POST /kbs/v0/attestation-policy).
#
# It follows Trustee's conventions: each AR4SI trust claim is an integer rule
# named with underscores, evidence claims are input.<tee>.<claim>, and the
# accepted values of a reference value are the list data.reference.<name>.
# The `findings` rule is a Cloak extension that explains each comparison in
# the audit log; a policy may leave it out.
#
# AR4SI values used here:
#   2  hardware: genuine and supported      | configuration: known and approved
#   3  executables: only approved ones were loaded
#   33 executables: not recognized (warning)
#   36 configuration: unknown to the verifier (warning)
#   97 hardware: not recognized although it should be (contraindicated)
#
# Each TEE has its own section; a TEE without one keeps the defaults, so its
# evidence is contraindicated.

package policy

import rego.v1

default hardware := 97

default configuration := 36

##### Configuration (initdata), the same for every TEE

# No initdata means there is no guest configuration to check; otherwise the
# digest bound into the evidence must be an accepted one.
configuration := 2 if initdata_accepted

initdata_accepted if object.get(input, "init_data", "") == ""

initdata_accepted if input.init_data in data.reference.init_data

findings contains finding if {
	object.get(input, "init_data", "") == ""
	finding := {
		"claim": "init_data",
		"group": "configuration",
		"ok": true,
		"message": "no initdata was supplied, so there is no guest configuration to check",
	}
}

findings contains compare("init_data", "configuration", input.init_data, "init_data") if {
	object.get(input, "init_data", "") != ""
}

##### sample: the unsigned development TEE

hardware := 2 if {
	input.sample
	input.sample.svn in data.reference.sample_svn
}

# The sample TEE reports no launch digest yet; executables is only appraised
# once an admin sets reference values for it.
executables := 3 if {
	input.sample
	sample_launch_digest_accepted
}

executables := 33 if {
	input.sample
	data.reference.sample_launch_digest
	not sample_launch_digest_accepted
}

sample_launch_digest_accepted if input.sample.launch_digest in data.reference.sample_launch_digest

findings contains compare("sample.svn", "hardware", object.get(input.sample, "svn", null), "sample_svn") if {
	input.sample
}

findings contains compare(
	"sample.launch_digest", "executables",
	object.get(input.sample, "launch_digest", null), "sample_launch_digest",
) if {
	input.sample
	data.reference.sample_launch_digest
}

##### Helpers

# compare explains how an evidence claim compares with the accepted values of
# reference value refname.
compare(claim, group, value, refname) := {
	"claim": claim,
	"group": group,
	"value": value,
	"reference": refs,
	"ok": ok,
	"message": comparison_message(claim, value, refs, refname),
} if {
	refs := object.get(data.reference, refname, [])
	ok := value in refs
}

comparison_message(claim, value, refs, refname) := sprintf("%s is missing from the evidence", [claim]) if {
	value == null
} else := msg if {
	count(refs) == 0
	msg := sprintf(
		"%s %s cannot be checked: reference value %q is not set",
		[claim, json.marshal(value), refname],
	)
} else := msg if {
	value in refs
	msg := sprintf("%s %s is among reference values %s", [claim, json.marshal(value), json.marshal(refs)])
} else := sprintf("%s %s is not among reference values %s", [claim, json.marshal(value), json.marshal(refs)])

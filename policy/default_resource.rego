# Cloak's default resource policy: what a fresh KBS uses until an admin sets
# another one (POST /kbs/v0/resource-policy).
#
# As in Trustee, input is the claims of the requester's EAR token and
# data = {"resource-path": "<repo>/<type>/<tag>", "plugin": "resource"}.
#
# A resource is released only to evidence that every attestation submodule
# appraised as "affirming", that does not come from the unsigned sample TEE
# and that is not marked emulated. Each deny_* rule names one failed
# condition; the KBS reports the first one that holds (in this file's order)
# and the `reasons` sentences in its audit log and error bodies.

package policy

import rego.v1

default allow := false

allow if {
	data.plugin == "resource"
	not deny_status
	not deny_sample
	not deny_emulated
}

# Fails closed: a token without submodules, or with a submodule whose status
# is missing or anything but "affirming", is denied.
default affirming := false

affirming if {
	count(input.submods) > 0
	every submod in input.submods {
		submod["ear.status"] == "affirming"
	}
}

deny_status if not affirming

deny_sample if {
	some submod in input.submods
	some tee, _ in submod["ear.veraison.annotated-evidence"]
	tee == "sample"
}

deny_emulated if {
	some submod in input.submods
	some claims in submod["ear.veraison.annotated-evidence"]
	claims.emulated == true
}

##### Reasons

statuses contains sprintf("%s: %v", [name, object.get(submod, "ear.status", "missing")]) if {
	some name, submod in input.submods
}

reasons contains msg if {
	deny_status
	count(statuses) == 0
	msg := "the token carries no attestation result (no submods); attest again"
}

reasons contains msg if {
	deny_status
	count(statuses) > 0
	msg := sprintf(
		"attestation status is not affirming (%s); the evidence must satisfy the attestation policy",
		[concat(", ", statuses)],
	)
}

reasons contains msg if {
	deny_sample
	msg := "evidence comes from the unsigned sample TEE; set a resource policy that allows it for development"
}

reasons contains msg if {
	deny_emulated
	msg := "evidence comes from an emulated TEE; set a resource policy that allows emulated evidence for testing"
}

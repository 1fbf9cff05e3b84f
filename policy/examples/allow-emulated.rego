package policy

import rego.v1

# A resource policy for CI, laptops and the demo only: release keys to
# emulated SEV-SNP or TDX guests whose attestation every verifier affirms
# (launch measurement and initdata equal to their reference values) except
# for the hardware, which the KBS never rates above "warning" (32, unsafe)
# for emulated evidence.
# Emulated evidence is signed by a key on the host, so it proves nothing
# against the host: never install this on a KBS that guards real secrets.
#
#   kbsctl resource-policy set --file policy/examples/allow-emulated.rego
default allow := false

allow if {
	every submod in input.submods {
		good_but_emulated(submod)
	}
	some submod in input.submods
	emulated(submod["ear.veraison.annotated-evidence"])
}

emulated(evidence) if evidence.snp.emulated == true

emulated(evidence) if evidence.tdx.emulated == true

good_but_emulated(submod) if submod["ear.status"] == "affirming"

# Warning only because the hardware is emulated: every other claim of the
# trust vector is affirming or not set (AR4SI -32..31).
good_but_emulated(submod) if {
	submod["ear.status"] == "warning"
	emulated(submod["ear.veraison.annotated-evidence"])
	tv := submod["ear.trustworthiness-vector"]
	tv.hardware == 32
	every value in object.remove(tv, ["hardware"]) {
		value >= -32
		value <= 31
	}
}

reasons contains sprintf("attestation status of %s is %s, not affirming except for the emulated hardware", [name, submod["ear.status"]]) if {
	some name, submod in input.submods
	not good_but_emulated(submod)
}

reasons contains "the evidence is not from an emulated TEE: this development policy releases keys to emulated guests only" if {
	every submod in input.submods {
		not emulated(submod["ear.veraison.annotated-evidence"])
	}
}

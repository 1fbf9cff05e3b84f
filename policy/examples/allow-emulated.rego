package policy

import rego.v1

# A resource policy for CI, laptops and the demo only: release keys to
# emulated SEV-SNP or TDX guests whose attestation every verifier affirms
# (launch measurement and initdata equal to their reference values).
# Emulated evidence is signed by a key on the host, so it proves nothing
# against the host: never install this on a KBS that guards real secrets.
#
#   kbsctl resource-policy set --file policy/examples/allow-emulated.rego
default allow := false

allow if {
	every submod in input.submods {
		submod["ear.status"] == "affirming"
	}
	some submod in input.submods
	emulated(submod["ear.veraison.annotated-evidence"])
}

emulated(evidence) if evidence.snp.emulated == true

emulated(evidence) if evidence.tdx.emulated == true

reasons contains sprintf("attestation status of %s is %s, not affirming", [name, submod["ear.status"]]) if {
	some name, submod in input.submods
	submod["ear.status"] != "affirming"
}

reasons contains "the evidence is not from an emulated TEE: this development policy releases keys to emulated guests only" if {
	every submod in input.submods {
		not emulated(submod["ear.veraison.annotated-evidence"])
	}
}

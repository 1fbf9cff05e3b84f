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
#   32 hardware: emulated, no hardware protection (warning; the KBS also
#      caps it there for any policy, policy.EmulatedHardware)
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
configuration := 2 if {
	initdata_accepted
	not tee_configuration_refused
}

# A TEE section refuses its guest's configuration (debug allowed, host data
# not approved...) by adding a tee_configuration_refused rule.
configuration := 96 if tee_configuration_refused

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

##### snp: AMD SEV-SNP (claims: kbs/verifier/snp, docs/attestation.md)

# Executables: the launch measurement must be a reference value.
executables := 3 if {
	input.snp
	input.snp.measurement in data.reference.snp_launch_measurement
}

executables := 33 if {
	input.snp
	not input.snp.measurement in data.reference.snp_launch_measurement
}

findings contains compare("snp.measurement", "executables", input.snp.measurement, "snp_launch_measurement") if {
	input.snp
}

# Hardware: the verifier proved the chip genuine; its reported TCB must reach
# every minimum set as reference values snp_minimum_tcb_<part> (one number
# each; bootloader, tee, snp, microcode).
snp_tcb_parts := ["bootloader", "tee", "snp", "microcode"]

snp_tcb_low contains part if {
	input.snp
	some part in snp_tcb_parts
	some minimum in object.get(data.reference, sprintf("snp_minimum_tcb_%s", [part]), [])
	input.snp.reported_tcb[part] < to_number(minimum)
}

hardware := 2 if {
	input.snp.reported_tcb
	count(snp_tcb_low) == 0
	not input.snp.emulated == true
}

hardware := 32 if {
	input.snp.reported_tcb
	count(snp_tcb_low) == 0
	input.snp.emulated == true
}

findings contains finding if {
	input.snp
	some part in snp_tcb_parts
	some minimum in object.get(data.reference, sprintf("snp_minimum_tcb_%s", [part]), [])
	value := input.snp.reported_tcb[part]
	ok := value >= to_number(minimum)
	finding := {
		"claim": sprintf("snp.reported_tcb.%s", [part]),
		"group": "hardware",
		"value": value,
		"reference": [minimum],
		"ok": ok,
		"message": sprintf("reported TCB %s SPL %d %s the minimum %s", [part, value, {true: "reaches", false: "is below"}[ok], minimum]),
	}
}

findings contains finding if {
	input.snp.emulated == true
	finding := {
		"claim": "snp.emulated",
		"group": "hardware",
		"value": true,
		"ok": false,
		"message": "the report is signed by a configured emulated root, not by AMD: no hardware protection",
	}
}

# Configuration: debugging must be disallowed by the guest policy, and
# HOST_DATA must be approved when reference values snp_host_data are set.
tee_configuration_refused if input.snp.policy.debug == true

tee_configuration_refused if {
	input.snp
	data.reference.snp_host_data
	not input.snp.host_data in data.reference.snp_host_data
}

findings contains finding if {
	input.snp
	debug := input.snp.policy.debug
	finding := {
		"claim": "snp.policy.debug",
		"group": "configuration",
		"value": debug,
		"ok": debug == false,
		"message": {
			true: "the guest policy allows debugging: the host can read guest memory",
			false: "the guest policy forbids debugging",
		}[debug],
	}
}

findings contains compare("snp.host_data", "configuration", input.snp.host_data, "snp_host_data") if {
	input.snp
	data.reference.snp_host_data
}

##### tdx: Intel TDX (claims: kbs/verifier/tdx, docs/attestation.md)

# Executables: MRTD (the TD's initial contents: firmware) must be a reference
# value, and so must each RTMR for which reference values tdx_rtmr<N> exist.
tdx_rtmr_refused contains i if {
	input.tdx
	some i in numbers.range(0, 3)
	refs := object.get(data.reference, sprintf("tdx_rtmr%d", [i]), null)
	refs != null
	not input.tdx[sprintf("rtmr%d", [i])] in refs
}

tdx_mr_td_accepted if input.tdx.mr_td in object.get(data.reference, "tdx_mr_td", [])

executables := 3 if {
	tdx_mr_td_accepted
	count(tdx_rtmr_refused) == 0
}

executables := 33 if {
	input.tdx
	not tdx_mr_td_accepted
}

executables := 33 if count(tdx_rtmr_refused) > 0

findings contains compare("tdx.mr_td", "executables", input.tdx.mr_td, "tdx_mr_td") if input.tdx

findings contains compare(claim, "executables", object.get(input.tdx, name, null), ref) if {
	input.tdx
	some i in numbers.range(0, 3)
	name := sprintf("rtmr%d", [i])
	claim := sprintf("tdx.%s", [name])
	ref := sprintf("tdx_%s", [name])
	data.reference[ref]
}

# Hardware: the verifier proved the quote genuine; the platform's and the
# quoting enclave's TCB status (from Intel's TCB info and QE identity) must
# be accepted: reference values tdx_tcb_status, else only "UpToDate".
tdx_tcb_accepted(status) if status in data.reference.tdx_tcb_status

tdx_tcb_accepted(status) if {
	not data.reference.tdx_tcb_status
	status == "UpToDate"
}

tdx_tcb_ok(status) if tdx_tcb_accepted(status)

else := false

hardware := 2 if {
	tdx_tcb_accepted(input.tdx.tcb_status)
	tdx_tcb_accepted(input.tdx.qe_tcb_status)
	not input.tdx.emulated == true
}

hardware := 32 if {
	tdx_tcb_accepted(input.tdx.tcb_status)
	tdx_tcb_accepted(input.tdx.qe_tcb_status)
	input.tdx.emulated == true
}

findings contains finding if {
	input.tdx
	some claim in ["tcb_status", "qe_tcb_status"]
	value := object.get(input.tdx, claim, null)
	ok := tdx_tcb_ok(value)
	finding := {
		"claim": sprintf("tdx.%s", [claim]),
		"group": "hardware",
		"value": value,
		"reference": object.get(data.reference, "tdx_tcb_status", ["UpToDate"]),
		"ok": ok,
		"message": sprintf("%s %s is %s", [claim, json.marshal(value), {true: "accepted", false: "not accepted"}[ok]]),
	}
}

findings contains finding if {
	input.tdx.emulated == true
	finding := {
		"claim": "tdx.emulated",
		"group": "hardware",
		"value": true,
		"ok": false,
		"message": "the quote chains to a configured emulated root, not to Intel: no hardware protection",
	}
}

# Configuration: the TD must not be a debug TD (TD_ATTRIBUTES.DEBUG).
tee_configuration_refused if input.tdx.debug == true

findings contains finding if {
	input.tdx
	debug := input.tdx.debug
	finding := {
		"claim": "tdx.debug",
		"group": "configuration",
		"value": debug,
		"ok": debug == false,
		"message": {
			true: "the TD is a debug TD: the host can read and change its memory",
			false: "the TD is not a debug TD",
		}[debug],
	}
}

##### tpm: TPM 2.0 quote (claims: kbs/verifier/tpm, docs/attestation.md)

# Hardware: the verifier accepts only quotes by an enrolled AK (and, when the
# KBS has EK roots, with an EK certificate that chains to them).
hardware := 2 if input.tpm.ak_trust == "enrolled"

# Executables: each reference value tpm_pcrNN (e.g. tpm_pcr04) lists the
# accepted values of that PCR; all that are set must match, and at least one
# must be set.
tpm_pcr_refs contains name if {
	input.tpm
	some name, _ in data.reference
	startswith(name, "tpm_pcr")
}

tpm_pcr_mismatch contains name if {
	some name in tpm_pcr_refs
	not object.get(input.tpm, substring(name, 4, -1), null) in data.reference[name]
}

executables := 3 if {
	count(tpm_pcr_refs) > 0
	count(tpm_pcr_mismatch) == 0
}

executables := 33 if count(tpm_pcr_mismatch) > 0

findings contains compare(sprintf("tpm.%s", [claim]), "executables", object.get(input.tpm, claim, null), name) if {
	some name in tpm_pcr_refs
	claim := substring(name, 4, -1)
}

##### Helpers

# compare explains how an evidence claim compares with the accepted values of
# reference value refname.
compare(claim, group, value, refname) := {
	"claim": claim,
	"group": group,
	"value": value,
	"reference": refs,
	"reference_name": refname,
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
	msg := sprintf("%s %s is among %s", [claim, json.marshal(value), refs_text(refs, refname)])
} else := sprintf("%s %s is not among %s", [claim, json.marshal(value), refs_text(refs, refname)])

# refs_text names a short list of accepted values in full; a long one (a
# signed bundle holds hundreds of SEV-SNP measurements, one per vCPU count and
# CPU model) only by count, so that findings stay small in tokens and audits.
refs_text(refs, refname) := sprintf("reference values %s", [json.marshal(refs)]) if {
	count(refs) <= 4
} else := sprintf("the %d values of reference value %q", [count(refs), refname])

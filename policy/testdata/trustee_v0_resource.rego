# A Trustee-style resource policy in Rego v0 syntax: a sample TEE whose
# productId equals the resource type may read it.
package policy

default allow = false

path := split(data["resource-path"], "/")

allow {
	data.plugin == "resource"
	count(path) == 3
	input["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["sample"]["productId"] == path[1]
}

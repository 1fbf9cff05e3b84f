package agent_policy

import rego.v1

# Placeholder while the rules are written.
default CreateContainerRequest := {"allow": false, "reasons": ["rules not written yet"]}

# Takes seconds to evaluate: used to check that a context deadline stops
# evaluation.
package policy

import rego.v1

default allow := false

allow if {
	some i in numbers.range(1, 4000)
	some j in numbers.range(1, 4000)
	i * j == -1
}

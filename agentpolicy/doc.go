// Package agentpolicy is the agent policy of a confidential pod: the Rego
// rules (package agent_policy, one rule per agentapi request message, as
// Kata's genpolicy rules are), the policy_data schema the generator fills
// in (Data), and the evaluation the guest agent runs on every host request.
//
// It imports only agentapi and OPA, so that both the guest (which enforces
// a policy) and host tools (which generate one) may import it.
package agentpolicy

// Package agentapi is the wire contract between the host (shim, tests) and
// cloak-agent in the guest: the gRPC service in agent.proto, its generated
// code, and the error reasons the agent reports. Like kbstypes, it is the
// only package both sides import for this channel, and it imports nothing
// else from the project.
//
// Regenerate with `make generate` after editing agent.proto.
package agentapi

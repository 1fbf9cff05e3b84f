package agent

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	"github.com/cloak-containers/cloak/api/agentapi"
	"github.com/cloak-containers/cloak/guest-image/hostinput"
	"github.com/cloak-containers/cloak/guest-image/pull"
)

// The agent's gRPC errors are hostinput's: one shape (status code and
// agentapi reason) for refusals of host input and for the agent's own.
var (
	agentErr  = hostinput.Err
	invalid   = hostinput.Invalid
	policyErr = hostinput.Denied
)

// pullErr maps a Puller's error to the agent's gRPC error.
func pullErr(image string, err error) error {
	reason, msg := agentapi.ReasonImagePull, fmt.Sprintf("pull %s: %v", image, err)
	var pe *pull.Error
	if errors.As(err, &pe) && pe.Reason != "" {
		// pull.Error messages already name the image and the failing step.
		reason, msg = pe.Reason, err.Error()
	}
	code := codes.Unavailable
	switch reason {
	case agentapi.ReasonKeyUnavailable, agentapi.ReasonPolicy:
		code = codes.PermissionDenied
	case agentapi.ReasonDecrypt:
		code = codes.DataLoss
	case agentapi.ReasonInvalidRequest:
		code = codes.InvalidArgument
	case agentapi.ReasonNotFound:
		code = codes.NotFound
	case agentapi.ReasonAttestationAgent:
		code = codes.FailedPrecondition
	}
	return agentErr(code, reason, "%s", msg)
}

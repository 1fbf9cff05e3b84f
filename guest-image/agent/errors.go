package agent

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/agentapi"
	"github.com/cloak-containers/cloak/guest-image/pull"
)

// agentErr builds the agent's gRPC error: a status code for generic
// clients, and an ErrorInfo with one of agentapi's reasons for the shim,
// which branches on the reason and shows the message to users.
func agentErr(code codes.Code, reason, format string, args ...any) error {
	st := status.New(code, fmt.Sprintf(format, args...))
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: agentapi.ErrorDomain}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// invalid is the common case of a malformed or oversized host field.
func invalid(format string, args ...any) error {
	return agentErr(codes.InvalidArgument, agentapi.ReasonInvalidRequest, format, args...)
}

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

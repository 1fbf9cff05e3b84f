package agentapi

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestReasonOf(t *testing.T) {
	withReason := func(domain, reason string) error {
		st, err := status.New(codes.FailedPrecondition, "init process has exited").WithDetails(&errdetails.ErrorInfo{Domain: domain, Reason: reason})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"agent reason", withReason(ErrorDomain, ReasonNotFound), ReasonNotFound},
		{"wrapped", fmt.Errorf("signal 9: %w", withReason(ErrorDomain, ReasonInitdataMismatch)), ReasonInitdataMismatch},
		{"other domain", withReason("example.com", ReasonNotFound), ""},
		{"no details", status.Error(codes.Unavailable, "transport closing"), ""},
		{"not grpc", errors.New("boom"), ""},
		{"nil", nil, ""},
	} {
		if got := ReasonOf(tt.err); got != tt.want {
			t.Errorf("%s: ReasonOf = %q, want %q", tt.name, got, tt.want)
		}
	}
}

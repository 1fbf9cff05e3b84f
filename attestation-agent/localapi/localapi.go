// Package localapi serves cloak.attestation.v1.AttestationAgent, the
// attestation agent's API for trusted components in the same guest (the
// guest agent, init code): KBS resources, the attestation token, and
// evidence over caller data.
package localapi

import (
	"context"
	"crypto/sha512"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloak-containers/cloak/api/attestationv1"
	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/attestation-agent/evidence"
	"github.com/cloak-containers/cloak/attestation-agent/rcar"
)

// MaxRuntimeData bounds GetEvidence's runtime_data.
const MaxRuntimeData = 64 << 10

// reportDataTag separates report data made for local callers from the KBS
// binding, whatever the caller hashes. It prefixes the hashed runtime data:
// the KBS binding is SHA-384 of a JSON object ("{..."), so the 48-byte
// digests differ in every prefix, which is what a tpm quote keeps (its
// first 32 bytes). It also fills the last 16 bytes, where snp and tdx put
// the KBS binding's zero padding.
var reportDataTag = []byte("cloak-localapi-1")

// KBS is what the service needs from the KBS client; *rcar.Client has it.
type KBS interface {
	GetResource(ctx context.Context, p kbstypes.ResourcePath) ([]byte, error)
	Token(ctx context.Context) (string, error)
}

// Server implements attestationv1.AttestationAgentServer.
type Server struct {
	attestationv1.UnimplementedAttestationAgentServer
	kbs      KBS
	provider evidence.Provider
}

// New returns a Server using kbs for resources and tokens and provider for
// evidence.
func New(kbs KBS, provider evidence.Provider) *Server {
	return &Server{kbs: kbs, provider: provider}
}

// Register adds the service to g.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	attestationv1.RegisterAttestationAgentServer(g, s)
}

// GetResource returns a KBS resource's plaintext.
func (s *Server) GetResource(ctx context.Context, req *attestationv1.GetResourceRequest) (*attestationv1.GetResourceResponse, error) {
	path, err := parsePath(req.GetPath())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	v, err := s.kbs.GetResource(ctx, path)
	if err != nil {
		return nil, rcar.StatusError(err)
	}
	return &attestationv1.GetResourceResponse{Resource: v}, nil
}

func parsePath(p string) (kbstypes.ResourcePath, error) {
	if strings.HasPrefix(p, "kbs://") {
		_, path, err := kbstypes.ParseResourceURI(p)
		return path, err
	}
	return kbstypes.ParseResourcePath(p)
}

// GetToken returns a valid attestation token.
func (s *Server) GetToken(ctx context.Context, _ *attestationv1.GetTokenRequest) (*attestationv1.GetTokenResponse, error) {
	tok, err := s.kbs.Token(ctx)
	if err != nil {
		return nil, rcar.StatusError(err)
	}
	return &attestationv1.GetTokenResponse{Token: tok}, nil
}

// GetEvidence returns evidence whose report data is LocalReportData(runtime_data).
func (s *Server) GetEvidence(ctx context.Context, req *attestationv1.GetEvidenceRequest) (*attestationv1.GetEvidenceResponse, error) {
	if n := len(req.GetRuntimeData()); n > MaxRuntimeData {
		return nil, status.Errorf(codes.InvalidArgument, "runtime_data is %d bytes, limit is %d", n, MaxRuntimeData)
	}
	ev, err := s.provider.Evidence(ctx, LocalReportData(req.GetRuntimeData()))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "get %s evidence: %v", s.provider.Tee(), err)
	}
	return &attestationv1.GetEvidenceResponse{Evidence: ev, Tee: s.provider.Tee()}, nil
}

// LocalReportData is the report data of evidence made for a local caller:
// SHA-384("cloak-localapi-1" || runtimeData) followed by that 16-byte tag.
// Hashing keeps callers from choosing raw report data; the tag keeps them
// from reproducing a KBS binding and so from obtaining evidence that would
// release this guest's secrets to a key they hold.
func LocalReportData(runtimeData []byte) []byte {
	h := sha512.New384()
	h.Write(reportDataTag)
	h.Write(runtimeData)
	sum := h.Sum(nil)
	out := make([]byte, 0, kbstypes.ReportDataSize)
	out = append(out, sum[:]...)
	return append(out, reportDataTag...)
}

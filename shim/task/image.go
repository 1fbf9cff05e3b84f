package task

import (
	"context"
	"fmt"
	"os"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Annotations that name a container's image in its OCI spec.
const (
	// AnnotationImage is Cloak's own: set it with `ctr run --annotation`
	// or any client that cannot be looked up through containerd.
	AnnotationImage = "io.cloak.image"
	// annotationCRIImage is set by containerd's CRI plugin.
	annotationCRIImage = "io.kubernetes.cri.image-name"
	// grpcAddressEnv is where containerd tells a shim its gRPC socket.
	grpcAddressEnv = "GRPC_ADDRESS"
)

// imageRef finds the image the guest must pull for a container. The host
// rootfs is never used, so the reference is needed: from the spec's
// annotations (CRI, or io.cloak.image), else from the container record in
// containerd (what `ctr run IMAGE` stores), read over containerd's gRPC API.
func imageRef(ctx context.Context, ns, id string, annotations map[string]string) (string, error) {
	for _, a := range []string{AnnotationImage, annotationCRIImage} {
		if ref := annotations[a]; ref != "" {
			return ref, nil
		}
	}
	addr := os.Getenv(grpcAddressEnv)
	if addr == "" {
		return "", fmt.Errorf("container %s: no image reference (annotation %s unset and containerd's address unknown)", id, AnnotationImage)
	}
	conn, err := grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", fmt.Errorf("connect to containerd at %s: %w", addr, err)
	}
	defer conn.Close()
	resp, err := containersapi.NewContainersClient(conn).Get(namespaces.WithNamespace(ctx, ns), &containersapi.GetContainerRequest{ID: id})
	if err != nil {
		return "", fmt.Errorf("look up container %s in containerd: %w", id, err)
	}
	if resp.Container.Image == "" {
		return "", fmt.Errorf("container %s has no image in containerd: set annotation %s", id, AnnotationImage)
	}
	return resp.Container.Image, nil
}

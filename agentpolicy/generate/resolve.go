package generate

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Image is what the generator needs of a container image: the digest the
// guest will find when it pulls the reference, and the config fields
// containerd merges into the container's process.
type Image struct {
	// Digest is the manifest digest of the linux/amd64 image ("sha256:..."):
	// for an index, the platform manifest's, the one the guest unpacks.
	Digest     string
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
}

// Resolver looks an image reference up. RegistryResolver asks the registry;
// tests and the fuzz target use a fake.
type Resolver interface {
	Resolve(ctx context.Context, ref string) (Image, error)
}

// Platform is the platform the guest runs (Cloak's guests are x86_64).
var Platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// RegistryResolver resolves references through the registries (or their
// mirrors), with the credentials of the Docker config (~/.docker/config.json).
type RegistryResolver struct {
	mirrors  map[string]mirror // registry host -> where to ask instead
	insecure map[string]bool   // registry hosts spoken to over plain HTTP

	mu    sync.Mutex
	cache map[string]Image
}

type mirror struct {
	host     string
	insecure bool
}

// NewRegistryResolver takes mirrors as "HOST=ENDPOINT" (the registry the pod
// names, and the URL to ask instead: 127.0.0.1:5000=http://10.0.0.1:5000)
// and insecure registries as "HOST:PORT" (plain HTTP).
func NewRegistryResolver(mirrors, insecure []string) (*RegistryResolver, error) {
	r := &RegistryResolver{mirrors: map[string]mirror{}, insecure: map[string]bool{}, cache: map[string]Image{}}
	for _, m := range mirrors {
		host, endpoint, ok := strings.Cut(m, "=")
		if !ok || host == "" || endpoint == "" {
			return nil, fmt.Errorf("mirror %q: want HOST=ENDPOINT, e.g. 127.0.0.1:5000=http://10.0.0.1:5000", m)
		}
		if !strings.Contains(endpoint, "://") {
			endpoint = "https://" + endpoint
		}
		u, err := url.Parse(endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" {
			return nil, fmt.Errorf("mirror %q: endpoint must be http://HOST[:PORT] or https://HOST[:PORT], without a path", m)
		}
		r.mirrors[canonicalHost(host)] = mirror{host: u.Host, insecure: u.Scheme == "http"}
	}
	for _, h := range insecure {
		if h == "" || strings.ContainsAny(h, "/=") {
			return nil, fmt.Errorf("insecure registry %q: want HOST[:PORT]", h)
		}
		r.insecure[canonicalHost(h)] = true
	}
	return r, nil
}

// canonicalHost spells Docker Hub the way go-containerregistry does.
func canonicalHost(h string) string {
	if h == "docker.io" {
		return name.DefaultRegistry
	}
	return h
}

// Resolve fetches the reference's manifest (the linux/amd64 one of an
// index) and config.
func (r *RegistryResolver) Resolve(ctx context.Context, ref string) (Image, error) {
	r.mu.Lock()
	img, ok := r.cache[ref]
	r.mu.Unlock()
	if ok {
		return img, nil
	}
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("not an image reference: %w", err)
	}
	host := parsed.Context().RegistryStr()
	var opts []name.Option
	if r.insecure[host] {
		opts = append(opts, name.Insecure)
	}
	if m, ok := r.mirrors[host]; ok {
		host = m.host
		if m.insecure {
			opts = append(opts, name.Insecure)
		}
	}
	sep := ":"
	if _, isDigest := parsed.(name.Digest); isDigest {
		sep = "@"
	}
	if parsed, err = name.ParseReference(host+"/"+parsed.Context().RepositoryStr()+sep+parsed.Identifier(), opts...); err != nil {
		return Image{}, fmt.Errorf("mirror reference: %w", err)
	}
	ri, err := remote.Image(parsed, remote.WithContext(ctx), remote.WithPlatform(Platform),
		remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return Image{}, fmt.Errorf("fetch manifest from %s: %w", parsed.Context().RegistryStr(), err)
	}
	digest, err := ri.Digest()
	if err != nil {
		return Image{}, fmt.Errorf("manifest digest: %w", err)
	}
	cf, err := ri.ConfigFile()
	if err != nil {
		return Image{}, fmt.Errorf("image config: %w", err)
	}
	if cf.OS != "" && (cf.OS != Platform.OS || cf.Architecture != Platform.Architecture) {
		return Image{}, fmt.Errorf("image is %s/%s, the guest runs %s/%s", cf.OS, cf.Architecture, Platform.OS, Platform.Architecture)
	}
	img = Image{
		Digest:     digest.String(),
		Entrypoint: cf.Config.Entrypoint,
		Cmd:        cf.Config.Cmd,
		Env:        cf.Config.Env,
		WorkingDir: cf.Config.WorkingDir,
		User:       cf.Config.User,
	}
	r.mu.Lock()
	r.cache[ref] = img
	r.mu.Unlock()
	return img, nil
}

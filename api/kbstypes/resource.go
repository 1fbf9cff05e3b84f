package kbstypes

import (
	"fmt"
	"strings"
)

// ResourcePath names a KBS resource: <repository>/<type>/<tag>.
type ResourcePath struct {
	Repository, Type, Tag string
}

// MaxPathSegment bounds each segment of a resource path.
const MaxPathSegment = 128

// String returns "repo/type/tag".
func (p ResourcePath) String() string {
	return p.Repository + "/" + p.Type + "/" + p.Tag
}

// URI returns the key-id form "kbs:///repo/type/tag".
func (p ResourcePath) URI() string { return "kbs:///" + p.String() }

// ParseResourcePath parses "repo/type/tag" (a leading "/" is allowed). Each
// segment must be 1-128 characters of [A-Za-z0-9._-] and may not be "." or
// "..", so a path can never escape its repository.
func ParseResourcePath(s string) (ResourcePath, error) {
	parts := strings.Split(strings.TrimPrefix(s, "/"), "/")
	if len(parts) != 3 {
		return ResourcePath{}, fmt.Errorf("resource path %q: want exactly three segments <repository>/<type>/<tag>", s)
	}
	for _, seg := range parts {
		if err := checkSegment(seg); err != nil {
			return ResourcePath{}, fmt.Errorf("resource path %q: %w", s, err)
		}
	}
	return ResourcePath{parts[0], parts[1], parts[2]}, nil
}

// ParseResourceURI parses a key id "kbs:///repo/type/tag" or
// "kbs://host:port/repo/type/tag"; the host part, if any, is returned
// separately and is only a hint (the agent talks to its configured KBS).
func ParseResourceURI(uri string) (host string, p ResourcePath, err error) {
	rest, ok := strings.CutPrefix(uri, "kbs://")
	if !ok {
		return "", ResourcePath{}, fmt.Errorf("resource URI %q: want kbs:///<repository>/<type>/<tag>", uri)
	}
	host, path, ok := strings.Cut(rest, "/")
	if !ok {
		return "", ResourcePath{}, fmt.Errorf("resource URI %q: missing resource path", uri)
	}
	p, err = ParseResourcePath(path)
	return host, p, err
}

func checkSegment(seg string) error {
	if seg == "" {
		return fmt.Errorf("empty segment")
	}
	if len(seg) > MaxPathSegment {
		return fmt.Errorf("segment longer than %d characters", MaxPathSegment)
	}
	if seg == "." || seg == ".." {
		return fmt.Errorf("segment %q is not allowed", seg)
	}
	for _, r := range seg {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return fmt.Errorf("segment %q: character %q not allowed (use A-Z a-z 0-9 . _ -)", seg, r)
		}
	}
	return nil
}

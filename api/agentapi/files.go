package agentapi

import "strings"

// DescendingLink reports whether a symlink target of a copied file
// (ContainerFile.symlink) only descends from the link's directory: relative,
// without empty, "." or ".." components. A tree whose links all descend
// cannot be left by following them. Both sides check it: the host before
// copying, the guest before creating the link.
func DescendingLink(target string) bool {
	if target == "" || strings.HasPrefix(target, "/") {
		return false
	}
	for _, part := range strings.Split(target, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}

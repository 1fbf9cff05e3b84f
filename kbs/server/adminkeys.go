package server

import (
	"crypto/ed25519"

	"github.com/cloak-containers/cloak/kbs/adminauth"
)

// SetAdminKeys replaces the admin and auditor keys of a running server (the
// kbs does it on SIGHUP) and returns the keys added and removed, with their
// roles. Requests authenticated before keep their role; the next ones are
// checked against the new keys. With no key at all the admin API answers
// 403 admin-disabled, as at a start without keys.
func (s *Server) SetAdminKeys(admin, auditor []ed25519.PublicKey) (added, removed []adminauth.Key) {
	return s.admin.SetKeys(adminKeys(Config{AdminKeys: admin, AuditorKeys: auditor}))
}

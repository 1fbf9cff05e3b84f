// Package integration holds Cloak's cross-component tests: the guest-side
// attestation agent against the real KBS over TLS on loopback, encrypted
// image layers through both halves of the ocicrypt keyprovider protocol, the
// real binaries end to end, and the handshake benchmark. It is the only place
// where guest and host packages meet, and only in tests.
package integration

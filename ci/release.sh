#!/usr/bin/env bash
# Packs a release: one versioned tarball with Cloak's host binaries, the guest
# image with its manifest (and signed reference values when SIGN_KEY is
# given), the handler configurations, the installer, a SHA256SUMS file of its
# contents and an SPDX SBOM of the Go modules in the binaries. The same
# inputs give the same tarball bytes, so every node installs the same image
# and the same reference values hold everywhere.
#
# Usage: ci/release.sh   (make release)
#   VERSION    release version (default: git describe --tags --always --dirty)
#   BIN        where `make build` put the binaries (default bin)
#   IMAGE_DIR  where `make image` put the guest image (default .work/image)
#   SIGN_KEY   PEM key to sign the image's reference values with (optional;
#              `kbsctl keygen` makes one; cloak-image sign)
#   OUT        directory for the tarball (default .work/release)
# Prints the tarball's path on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
bin=${BIN:-bin}
image=${IMAGE_DIR:-.work/image}
out=${OUT:-.work/release}
sign_key=${SIGN_KEY:-}
# The host binaries; cloak-agent and cloak-aa are inside the image.
binaries=(containerd-shim-cloak-v2 kbs kbsctl cloak cloak-image cloak-snapshotter)
image_files=(vmlinuz root.img manifest.json debian/vmlinuz debian/initrd.img)

say() { echo "release: $*" >&2; }
fail() { echo "release: $*" >&2; exit 1; }

case $version in *[!A-Za-z0-9._+-]*|"") fail "VERSION=$version: use letters, digits and . _ + -" ;; esac
for b in "${binaries[@]}"; do
	[ -x "$bin/$b" ] || fail "$bin/$b is missing: run \`make build\` first (or set BIN to where it is)"
done
for f in "${image_files[@]}"; do
	[ -f "$image/$f" ] || fail "$image/$f is missing: run \`make image\` first (or set IMAGE_DIR to where it is)"
done
[ -z "$sign_key" ] || [ -r "$sign_key" ] || fail "SIGN_KEY=$sign_key: cannot read it (a PEM private key; kbsctl keygen makes one)"

# The commit time dates every file and the SBOM: no build clock in the bytes.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH=$epoch

name=cloak-$version-linux-amd64
mkdir -p "$out"
stage=$(mktemp -d "$out/.stage-XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/$name
mkdir -p "$root/bin" "$root/image/debian" "$root/config"

say "$name: binaries"
for b in "${binaries[@]}"; do
	install -m 0755 "$bin/$b" "$root/bin/$b"
done
say "$name: guest image"
for f in "${image_files[@]}"; do
	install -m 0644 "$image/$f" "$root/image/$f"
done
if [ -n "$sign_key" ]; then
	say "$name: signing the reference values"
	"$bin/cloak-image" sign --dir "$root/image" --sign-key "$sign_key" >&2
	chmod 0644 "$root/image/reference-values.cose"
else
	say "$name: no SIGN_KEY: the release carries no signed reference values (cloak-image sign can add them)"
fi
install -m 0644 shim/config/handlers/configuration-*.toml "$root/config/"
install -m 0755 ci/install.sh "$root/install.sh"
say "$name: SBOM"
"$bin/cloak-image" sbom --name cloak --version "$version" --out "$root/sbom.spdx.json" "${binaries[@]/#/$root/bin/}"
(cd "$root" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum >SHA256SUMS)

tarball=$out/$name.tar.gz
say "$tarball"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --mode='go-w' \
	-C "$stage" -cf - "$name" | gzip -n >"$tarball.tmp"
mv "$tarball.tmp" "$tarball"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
say "$(cut -d' ' -f1 "$tarball.sha256") $name.tar.gz"
echo "$tarball"

#!/usr/bin/env bash
# Installs Cloak's host side: the binaries, the guest image and one default
# configuration per runtime handler; then prints the containerd configuration
# that registers the handlers (stdout; progress lines go to stderr).
#
# Usage: ci/install.sh   (make install, or make install RELEASE=FILE)
#   DESTDIR    staging root, prefixed to every path (default: none)
#   PREFIX     binaries go to PREFIX/bin (default /usr/local)
#   RELEASE    a tarball from `make release`: install its bytes, verified
#              against its SHA256SUMS, and build nothing (BIN, IMAGE_DIR and
#              CONFIG_DIR are then ignored)
#   BIN        where `make build` put the binaries (default bin)
#   IMAGE_DIR  where `make image` put the guest image (default .work/image)
#   CONFIG_DIR the handler configurations (default shim/config/handlers)
# Run from an unpacked release (its install.sh), it installs that release.
# The image goes to /usr/share/cloak/image and the configurations to /etc/cloak,
# the paths the shim and the configurations use by default. An existing
# configuration is never overwritten: the new default goes beside it as .new.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

destdir=${DESTDIR:-}
prefix=${PREFIX:-/usr/local}
release=${RELEASE:-}
if [ -z "$release" ] && [ -f "$here/SHA256SUMS" ] && [ -d "$here/bin" ]; then
	release=$here # the install.sh inside an unpacked release
fi
image_dest=/usr/share/cloak/image
conf_dest=/etc/cloak
share_dest=/usr/share/cloak
handlers=(cloak emulated snp tdx)
# Host binaries only: cloak-agent and cloak-aa run in the guest, inside the image.
required=(containerd-shim-cloak-v2 kbs kbsctl cloak-image)
optional=(cloak-snapshotter cloak)

say() { echo "install: $*" >&2; }
fail() { echo "install: $*" >&2; exit 1; }

if [ -n "$release" ]; then
	if [ -d "$release" ]; then
		rel_root=$release
	else
		[ -r "$release" ] || fail "RELEASE=$release: no such file (a tarball from make release)"
		unpack=$(mktemp -d)
		trap 'rm -rf "$unpack"' EXIT
		tar -xzf "$release" -C "$unpack" || fail "RELEASE=$release: not a gzip tarball"
		tops=("$unpack"/*)
		[ "${#tops[@]}" = 1 ] && [ -d "${tops[0]}" ] || fail "RELEASE=$release: want one top directory (cloak-VERSION-linux-amd64/), as make release writes"
		rel_root=${tops[0]}
	fi
	[ -f "$rel_root/SHA256SUMS" ] || fail "release $release has no SHA256SUMS: not made by make release"
	if ! sums=$(cd "$rel_root" && sha256sum --quiet --strict -c SHA256SUMS 2>&1); then
		fail "release $release does not match its SHA256SUMS, nothing installed: $sums"
	fi
	say "installing release $(basename "$rel_root") (SHA256SUMS verified)"
	bin=$rel_root/bin
	image=$rel_root/image
	config_dir=$rel_root/config
else
	cd "$here/.."
	bin=${BIN:-bin}
	image=${IMAGE_DIR:-.work/image}
	config_dir=${CONFIG_DIR:-shim/config/handlers}
fi

case $prefix in /*) ;; *) fail "PREFIX=$prefix: want an absolute path" ;; esac
for b in "${required[@]}"; do
	[ -x "$bin/$b" ] || fail "$bin/$b is missing: run \`make build\` first (or set BIN to where it is)"
done
for f in vmlinuz root.img manifest.json debian/vmlinuz debian/initrd.img; do
	[ -f "$image/$f" ] || fail "$image/$f is missing: run \`make image\` first (or set IMAGE_DIR to where it is)"
done

for b in "${required[@]}" "${optional[@]}"; do
	if [ ! -x "$bin/$b" ]; then
		say "skipping $b: not built ($bin/$b); CRI pods need it for guest pull"
		continue
	fi
	say "$destdir$prefix/bin/$b"
	# install unlinks the old file first: a running shim keeps its binary.
	install -D -m 0755 "$bin/$b" "$destdir$prefix/bin/$b"
done

for f in vmlinuz root.img manifest.json debian/vmlinuz debian/initrd.img reference-values.cose; do
	[ -f "$image/$f" ] || continue # the signed reference values are optional
	say "$destdir$image_dest/$f"
	install -D -m 0644 "$image/$f" "$destdir$image_dest/$f"
done

for h in "${handlers[@]}"; do
	src=$config_dir/configuration-$h.toml
	dst=$destdir$conf_dest/configuration-$h.toml
	if [ ! -e "$dst" ]; then
		say "$dst"
		install -D -m 0644 "$src" "$dst"
	elif cmp -s "$src" "$dst"; then
		say "$dst is up to date"
	else
		install -D -m 0644 "$src" "$dst.new"
		say "kept your $dst; the new default is $dst.new: compare them and merge what you need"
	fi
done

# CRI cannot set a negative oom_score_adj without CAP_SYS_RESOURCE (bit 24 of
# the capability sets); containerd then needs restrict_oom_score_adj.
oom="# restrict_oom_score_adj = true  # needed where containerd lacks CAP_SYS_RESOURCE"
capeff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
if [ -n "$capeff" ] && ((((0x$capeff >> 24) & 1) == 0)); then
	oom="restrict_oom_score_adj = true  # this host lacks CAP_SYS_RESOURCE"
fi

snippet=$(
	cat <<EOF
# Cloak runtime handlers for containerd v2 (config version = 3).
# Add to /etc/containerd/config.toml (merge the keys into tables the file
# already has), then restart containerd. cloak-snapshotter must be running
# (socket /run/cloak/snapshotter.sock): with it the guest pulls the images and
# the host downloads and unpacks no layer (docs/snapshotter.md).
[proxy_plugins.cloak]
  type = "snapshot"
  address = "/run/cloak/snapshotter.sock"

# Pulls go through the transfer service, which unpacks only into the
# snapshotters listed here (the list replaces the default: keep overlayfs).
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "cloak"

[plugins."io.containerd.cri.v1.runtime"]
  $oom
EOF
	for h in "${handlers[@]}"; do
		name=cloak-$h
		[ "$h" = cloak ] && name=cloak
		cat <<EOF

# CRI pulls images for pods of this handler with the cloak snapshotter.
[plugins."io.containerd.cri.v1.images".runtime_platforms.$name]
  snapshotter = "cloak"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.$name]
  runtime_type = "io.containerd.cloak.v2"
  snapshotter = "cloak"
  # Pod annotations the shim may see; it honours only its allowed_annotations.
  pod_annotations = ["io.cloak.*"]
  options = { ConfigPath = "$conf_dest/configuration-$h.toml" }
EOF
	done
)
say "$destdir$share_dest/containerd-config.toml (the snippet below)"
install -d "$destdir$share_dest"
printf '%s\n' "$snippet" >"$destdir$share_dest/containerd-config.toml"
say "done; containerd configuration:"
printf '%s\n' "$snippet"

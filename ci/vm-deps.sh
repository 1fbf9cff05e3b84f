#!/usr/bin/env bash
# Installs what building and booting the guest image needs on Debian 12, as
# root. Idempotent: quiet when everything is there, otherwise says what it did.
#   - apt source for bookworm-backports (QEMU 10 with sev-snp-guest, the 6.12
#     cloud kernel), same archive host and keyring as debian.sources
#   - qemu-system-x86 from bookworm-backports
#   - make, flex, bison, bc, libelf-dev, libssl-dev (Cloak's guest kernel is
#     compiled from linux-source-6.12), erofs-utils + cryptsetup-bin (the
#     root disk: mkfs.erofs, veritysetup)
#   - kmod (depmod indexes Debian's kernel modules), gcc + libseccomp-dev
#     (runc is linked statically with libseccomp and glibc), busybox-static
#     (test images), ca-certificates (the guest's CA bundle), swtpm +
#     swtpm-tools (the vTPM: swtpm, swtpm_setup and its local EK CA); apt-get
#     and dpkg (kernel download and unpacking) come with Debian
#   - the SEV-SNP and TDX OVMF builds (ovmf-amdsev, ovmf-inteltdx) from Debian
#     unstable, unpacked into $HOME/.cache/cloak/ovmf-<version>/ (fetch_ovmf)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "vm-deps: run as root (apt-get install)" >&2; exit 1
fi

sources=/etc/apt/sources.list.d/cloak-backports.sources
base=/etc/apt/sources.list.d/debian.sources
need_update=0

has_backports() {
	grep -rqsE '^(Suites:.*[[:space:]]|deb .*[[:space:]])bookworm-backports([[:space:]]|$)' \
		/etc/apt/sources.list /etc/apt/sources.list.d/
}
if ! has_backports; then
	uri=http://deb.debian.org/debian
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	if [ -f "$base" ]; then
		# Reuse the archive host and keyring of the main Debian source.
		uri=$(awk '/^URIs:/ {print $2; exit}' "$base")
		keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$base")
	fi
	cat >"$sources" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: $keyring
SRC
	echo "vm-deps: added $sources ($uri bookworm-backports)"
	need_update=1
fi
# Never updated on this machine, or the backports index is missing.
if ! compgen -G '/var/lib/apt/lists/*bookworm-backports_main_binary-amd64_Packages*' >/dev/null; then
	need_update=1
fi
if [ "$need_update" = 1 ]; then
	echo "vm-deps: apt-get update"
	apt-get update -qq
fi

# Debian 12 ships neither an AMDSEV nor a TDX OVMF build; unstable does, as
# separate packages. They are fetched with apt-get download under a private apt
# state (own sources list, lists and cache) so the system's sources never gain
# unstable, and unpacked with dpkg -x (never installed). The launch
# measurements (measurements/snp, measurements/tdx) are computed over exactly
# these files, so the version is pinned.
OVMF_VERSION=${OVMF_VERSION:-2026.08+ds-2}
fetch_ovmf() {
	local dest="${HOME}/.cache/cloak/ovmf-${OVMF_VERSION}"
	if [ -f "$dest/OVMF.amdsev.fd" ] && [ -f "$dest/OVMF.inteltdx.fd" ]; then
		return 0
	fi
	local uri=http://deb.debian.org/debian
	local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	if [ -f "$base" ]; then
		uri=$(awk '/^URIs:/ {print $2; exit}' "$base")
		keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$base")
	fi
	local state
	state=$(mktemp -d)
	chmod 0755 "$state" # apt downloads as _apt
	mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/sources.list.d" "$state/debs"
	printf 'deb [signed-by=%s] %s unstable main\n' "$keyring" "$uri" >"$state/etc/sources.list"
	# apt-get download writes into the current directory as _apt.
	chown _apt "$state/debs" 2>/dev/null || true
	local opts=(-o Dir::Etc::sourcelist="$state/etc/sources.list"
		-o Dir::Etc::sourceparts="$state/etc/sources.list.d"
		-o Dir::State::lists="$state/lists"
		-o Dir::Cache="$state/cache"
		-o Dir::State::status=/dev/null
		-o APT::Get::List-Cleanup=0)
	echo "vm-deps: fetching ovmf-amdsev and ovmf-inteltdx ${OVMF_VERSION} from unstable"
	apt-get "${opts[@]}" update -qq
	if ! (cd "$state/debs" && apt-get "${opts[@]}" download -qq \
		"ovmf-amdsev=${OVMF_VERSION}" "ovmf-inteltdx=${OVMF_VERSION}"); then
		echo "vm-deps: ovmf-amdsev/ovmf-inteltdx ${OVMF_VERSION} not in unstable any more: pick the new version" \
			"(OVMF_VERSION=...) and recompute the known answers in measurements/snp and measurements/tdx" >&2
		rm -rf "$state"
		exit 1
	fi
	mkdir -p "$state/root"
	for deb in "$state"/debs/*.deb; do dpkg -x "$deb" "$state/root"; done
	mkdir -p "$dest"
	cp "$state/root/usr/share/ovmf/OVMF.amdsev.fd" "$dest/OVMF.amdsev.fd"
	# The inteltdx package's image has Microsoft's Secure Boot keys enrolled
	# (.ms.fd); keep one stable name for the TDX firmware.
	local tdx
	tdx=$(find "$state/root/usr/share/ovmf" -name 'OVMF.inteltdx*.fd' | sort | head -1)
	cp "$tdx" "$dest/OVMF.inteltdx.fd"
	(cd "$dest" && sha256sum OVMF.amdsev.fd OVMF.inteltdx.fd >SHA256SUMS)
	rm -rf "$state"
	echo "vm-deps: OVMF in $dest ($(basename "$tdx") as OVMF.inteltdx.fd)"
}

installed=()
install_missing() { # pkg...
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	installed+=("${missing[@]}")
}

# Debian 12's own QEMU is 7.2 (no SEV-SNP); take 10.x from backports.
if ! dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null | grep -q 'bpo12'; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
	installed+=("qemu-system-x86 (bookworm-backports)")
fi
install_missing kmod gcc libc6-dev libseccomp-dev busybox-static ca-certificates swtpm swtpm-tools \
	make flex bison bc libelf-dev libssl-dev erofs-utils cryptsetup-bin

fetch_ovmf

if [ ${#installed[@]} -gt 0 ]; then
	echo "vm-deps: installed ${installed[*]}"
	echo "vm-deps: $(qemu-system-x86_64 --version | head -1)"
fi

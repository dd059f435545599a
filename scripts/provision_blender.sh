#!/usr/bin/env bash
# Provision a real Blender application in a Debian chroot for the real-Blender tests.
#
#   scripts/provision_blender.sh SUITE DIR
#
# SUITE trixie gives Debian's Blender 4.3.2 (Python 3.13), sid gives 5.2.2 LTS (Python 3.14).
# Each comes with Xvfb, xdotool and ImageMagick so the tests can drive its UI on a virtual
# screen. Needs root (debootstrap, chroot). Idempotent: DIR/.da3-ready marks a finished chroot,
# so an interrupted run is redone instead of trusted.
set -euo pipefail

suite=${1:?usage: provision_blender.sh trixie|sid DIR}
root=${2:?usage: provision_blender.sh trixie|sid DIR}
ready="$root/.da3-ready"

if [ -f "$ready" ]; then
    echo "$suite: $(cat "$ready")"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "provision_blender: needs root (debootstrap and chroot); set BLENDER=/path/to/blender instead" >&2
    exit 1
fi
# `make blender-apps` provisions both suites at once: the host's apt allows one user at a time
# (a second `apt-get update` fails on its lock instead of waiting), so the install is serialised.
install_debootstrap() {
    command -v debootstrap >/dev/null && return
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
if ! command -v debootstrap >/dev/null; then
    exec 9>/tmp/da3-provision-apt.lock
    flock 9
    install_debootstrap
    flock -u 9
fi

packages=(blender xvfb xauth xdotool imagemagick libgl1-mesa-dri python3-numpy)
apt_options=()
if [ "$suite" = sid ]; then
    # The mirror's sid Release file is past its Valid-Until date; Blender 5.2's extension
    # system needs requests and cattrs to register.
    apt_options=(-o Acquire::Check-Valid-Until=false)
    packages+=(python3-requests python3-cattr)
fi

# A finished debootstrap is kept (DIR/.da3-base) when the package step fails and is retried.
if [ ! -f "$root/.da3-base" ]; then
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" >"$root.log" 2>&1 ||
        { tail -n 20 "$root.log" >&2; exit 1; }
    touch "$root/.da3-base"
fi
# apt inside the chroot needs /proc; a private mount namespace drops the mount when it ends.
in_root() {
    unshare --mount --propagation private -- \
        sh -euc 'mount -t proc proc "$0/proc"; exec chroot "$0" "$@"' "$root" "$@"
}
{
    in_root apt-get ${apt_options[@]+"${apt_options[@]}"} update -qq &&
    in_root env DEBIAN_FRONTEND=noninteractive apt-get ${apt_options[@]+"${apt_options[@]}"} \
        install -y -qq --no-install-recommends "${packages[@]}"
} >>"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; exit 1; }
chroot "$root" apt-get clean
version=$(chroot "$root" blender --version 2>/dev/null | head -n 1)
echo "$version" >"$ready"
echo "$suite: $version"

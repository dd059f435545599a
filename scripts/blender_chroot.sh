#!/usr/bin/env bash
# Run a command in a Blender chroot made by provision_blender.sh, with this machine's /proc,
# /dev and /sys and the given folders bind-mounted at the same paths, in the current folder.
#
#   scripts/blender_chroot.sh ROOT [--bind DIR]... -- COMMAND...
#
# The mounts live in a private mount namespace: they vanish when the command ends, however it
# ends, so nothing is left mounted inside the chroot (and `rm -rf` of it stays safe).
set -euo pipefail
root=${1:?usage: blender_chroot.sh ROOT [--bind DIR]... -- COMMAND...}
shift
binds=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    [ "$1" = --bind ] || { echo "blender_chroot.sh: unexpected '$1'" >&2; exit 2; }
    binds+=("$2")
    shift 2
done
shift
exec unshare --mount --propagation private -- sh -euc '
    root=$1; cwd=$2; count=$3; shift 3
    for dir in /proc /dev /sys; do mount --rbind "$dir" "$root$dir"; done
    while [ "$count" -gt 0 ]; do
        mkdir -p "$root$1"
        mount --rbind "$1" "$root$1"
        shift; count=$((count - 1))
    done
    exec chroot "$root" /usr/bin/env -C "$cwd" "$@"' \
    sh "$root" "$PWD" "${#binds[@]}" ${binds[@]+"${binds[@]}"} "$@"

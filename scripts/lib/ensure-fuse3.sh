# shellcheck shell=bash
#
# Shared helpers for scripts/test and scripts/demo: make sure FUSE 3 is
# usable. Source it; it defines functions and changes nothing by itself.
#
#   ensure_fuse3     install the fuse3 package (fusermount3) if missing
#   ensure_dev_fuse  check that /dev/fuse exists and is usable

# Runs "$@" as root: directly if we are root, else through sudo.
_vmcryptfs_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root to run '$*', and sudo is not installed" >&2
        exit 1
    fi
}

ensure_fuse3() {
    if command -v fusermount3 >/dev/null 2>&1; then
        return 0
    fi
    echo "==> fusermount3 not found: installing the fuse3 package" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        cat >&2 <<'MSG'
error: fusermount3 (package fuse3) is missing and apt-get is not available.
Install FUSE 3 with your distribution's package manager, then re-run:
  Fedora/RHEL:  dnf install fuse3
  Arch:         pacman -S fuse3
  openSUSE:     zypper install fuse3
  Alpine:       apk add fuse3
MSG
        exit 1
    fi
    _vmcryptfs_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _vmcryptfs_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3
    if ! command -v fusermount3 >/dev/null 2>&1; then
        echo "error: installed fuse3 but fusermount3 is still not on PATH" >&2
        exit 1
    fi
}

ensure_dev_fuse() {
    if [ ! -e /dev/fuse ]; then
        cat >&2 <<'MSG'
error: /dev/fuse does not exist, so nothing can be mounted.
  On a host:         load the module: modprobe fuse
  In a container:    start it with the device, e.g.
                     docker run --device /dev/fuse --cap-add SYS_ADMIN ...
MSG
        exit 1
    fi
    if [ ! -r /dev/fuse ] || [ ! -w /dev/fuse ]; then
        echo "warning: /dev/fuse is not readable and writable by $(id -un); mounts will fail" \
             "(it is usually mode 0666; run as root or fix its permissions)" >&2
    fi
}

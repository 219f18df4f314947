# shellcheck shell=bash
#
# Shared helpers for scripts/test and scripts/demo: make sure FUSE 3 is
# usable (and other tools the scripts need). Source it; it defines functions and changes nothing by itself.
#
#   ensure_tool      install a Debian package if its command is missing
#   ensure_fuse3     install the fuse3 package (fusermount3) if missing
#   ensure_openssl_dev  install what the build needs to link libcrypto
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

# _vmcryptfs_apt_install WHAT PACKAGE...: installs Debian packages, or
# explains how to get WHAT where there is no apt-get.
_vmcryptfs_apt_install() {
    local what=$1
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: $what is missing and apt-get is not available." >&2
        echo "Install $* (or your distribution's equivalent) with its package manager (dnf, pacman, zypper, apk), then re-run." >&2
        exit 1
    fi
    _vmcryptfs_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _vmcryptfs_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# ensure_tool COMMAND PACKAGE: installs the Debian PACKAGE if COMMAND is
# not on PATH.
ensure_tool() {
    local tool=$1 package=$2
    if command -v "$tool" >/dev/null 2>&1; then
        return 0
    fi
    echo "==> $tool not found: installing the $package package" >&2
    _vmcryptfs_apt_install "$tool (package $package)" "$package"
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: installed $package but $tool is still not on PATH" >&2
        exit 1
    fi
}

# ensure_openssl_dev: file content is sealed with the system's OpenSSL
# libcrypto (crypto::block_aead), so building needs its headers and
# pkg-config to find them.
ensure_openssl_dev() {
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; then
        return 0
    fi
    echo "==> OpenSSL development files not found (pkg-config openssl): installing pkg-config and libssl-dev" >&2
    _vmcryptfs_apt_install "OpenSSL's development files (libssl-dev, or openssl-devel / openssl-dev) with pkg-config" \
        pkg-config libssl-dev
    if ! pkg-config --exists openssl; then
        echo "error: installed libssl-dev but pkg-config still cannot find openssl" >&2
        exit 1
    fi
}

ensure_fuse3() {
    ensure_tool fusermount3 fuse3
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

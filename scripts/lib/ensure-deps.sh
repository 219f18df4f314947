# shellcheck shell=bash
#
# Shared helpers for scripts/test and scripts/demo: make sure FUSE 3 is
# usable (and other tools the scripts need). Source it; it defines functions and changes nothing by itself.
#
#   ensure_tool      install a Debian package if its command is missing
#   ensure_fuse3     install the fuse3 package (fusermount3) if missing
#   ensure_c_compiler  install a C compiler if missing (the build compiles C)
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

# ensure_c_compiler: the build compiles C: AWS-LC, which seals file
# content (crypto::block_aead, through aws-lc-sys) and is the KMIP
# client's TLS crypto (rustls on aws-lc-rs). It brings its sources, so a C
# compiler and the C library's headers are all it needs; rustc links
# through `cc` as well.
ensure_c_compiler() {
    if command -v cc >/dev/null 2>&1; then
        return 0
    fi
    echo "==> no C compiler (cc) found: installing gcc and libc6-dev" >&2
    _vmcryptfs_apt_install "a C compiler (gcc, with the C library's headers: libc6-dev, glibc-devel)" \
        gcc libc6-dev
    if ! command -v cc >/dev/null 2>&1; then
        echo "error: installed gcc but cc is still not on PATH" >&2
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

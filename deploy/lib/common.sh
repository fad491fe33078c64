# Shared by the deploy scripts: root check, Debian packages, the Rust toolchain.
# shellcheck shell=bash

ORCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH="$HOME/.cargo/bin:/usr/local/cargo/bin:$PATH"

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 must run as root (it installs packages and, later, creates namespaces, bridges and cgroups); try: sudo bash $0"
}

# install_packages PKG...: apt-get installs whatever of the list is missing.
install_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found: orch's scripts target Debian 12; install ${missing[*]} by hand"
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # On a systemd machine etcd-server also starts a system etcd on 127.0.0.1:2379;
    # orch's scripts start their own on other ports and never touch that one.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# The build needs a Rust toolchain (rustup, 1.88 or newer); Debian 12's own cargo is too old.
require_rust() {
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain 1.88 or newer with rustup (https://rustup.rs), then run this again"
    local version
    version="$(rustc --version | awk '{print $2}')"
    local minor="${version#1.}"; minor="${minor%%.*}"
    [ "${minor:-0}" -ge 88 ] || die "rustc $version is too old: orch needs 1.88 or newer (rustup update)"
}

# Packages the build itself needs.
BUILD_PACKAGES=(protobuf-compiler gcc libc6-dev pkg-config)

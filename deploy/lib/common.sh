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

# install_without_services PKG...: packages that bring a daemon of their own (Debian's
# docker-registry on :5000, prometheus on :9090) are installed with service starts
# denied (a policy-rc.d for the install, unless the machine has one already), and on a
# systemd machine their units are disabled: orch's scripts and tests run their own
# instances, on addresses they choose.
install_without_services() {
    local missing=() pkg policy=/usr/sbin/policy-rc.d placed=0 status=0
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ ! -e "$policy" ]; then
        placed=1
    fi
    # In a subshell whose exit (a failure, Ctrl-C, SIGTERM) takes the policy away again.
    (
        if [ "$placed" = 1 ]; then
            trap 'rm -f "$policy"' EXIT
            trap 'exit 130' INT TERM
            printf '#!/bin/sh\n# orch: no service starts while its test packages install\nexit 101\n' >"$policy"
            chmod 755 "$policy"
        fi
        install_packages "${missing[@]}"
    ) || status=$?
    [ "$status" = 0 ] || die "installing ${missing[*]} failed"
    if [ -d /run/systemd/system ]; then
        step "disabling the own services of ${missing[*]} (orch runs its instances itself)"
        local unit units
        # Every unit the packages ship (docker.io: docker.socket and docker.service),
        # sockets first: an active socket would start its service again.
        units="$({ dpkg -L "${missing[@]}" 2>/dev/null || true; } | sed -n 's#^\(/usr\)\{0,1\}/lib/systemd/system/\([^/]*\.\(service\|socket\)\)$#\2#p')"
        for unit in $(grep '\.socket$' <<<"$units") $(grep '\.service$' <<<"$units"); do
            systemctl disable --now "$unit" >/dev/null 2>&1 || true
        done
    fi
}

# The build needs a Rust toolchain (rustup, 1.88 or newer); Debian 12's own cargo is too old.
# Under sudo, root usually has no toolchain of its own: the invoking user's rustup
# (~SUDO_USER/.cargo/bin) is found and used read-only, with root's own CARGO_HOME for
# downloads, so nothing in that user's home ends up owned by root.
# release_binaries PACKAGE...: sets `bin` to $ORCH_BIN when given, else builds the
# workspace's release binaries (installing the build packages and PACKAGE... first) and
# sets it to target/release.
release_binaries() {
    bin="${ORCH_BIN:-$ORCH_ROOT/target/release}"
    [ -z "${ORCH_BIN:-}" ] || return 0
    require_rust
    install_packages "${BUILD_PACKAGES[@]}" "$@"
    step "cargo build --release"
    (cd "$ORCH_ROOT" && cargo build --release >&2)
}

require_rust() {
    if ! command -v cargo >/dev/null && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        local user_home
        user_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
        if [ -n "$user_home" ] && [ -x "$user_home/.cargo/bin/cargo" ]; then
            step "using $SUDO_USER's Rust toolchain ($user_home/.cargo/bin, read-only)"
            export PATH="$user_home/.cargo/bin:$PATH"
            export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
            export CARGO_HOME="${CARGO_HOME:-$(getent passwd root | cut -d: -f6)/.cargo}"
            mkdir -p "$CARGO_HOME"
        fi
    fi
    command -v cargo >/dev/null || die "cargo not found for root${SUDO_USER:+ or $SUDO_USER}: install a Rust toolchain 1.88 or newer with rustup (https://rustup.rs) — as root, or as your user and run this with sudo from that user — then run this again"
    local version
    version="$(rustc --version | awk '{print $2}')" || die "rustc does not run: check the toolchain (rustup show)"
    local minor="${version#1.}"; minor="${minor%%.*}"
    [ "${minor:-0}" -ge 88 ] || die "rustc $version is too old: orch needs 1.88 or newer (rustup update stable)"
}

# Packages the build itself needs: protoc and the well-known .proto files it imports
# (etcd-client's build script includes google/protobuf/descriptor.proto, which Debian
# ships in libprotobuf-dev), a C toolchain for -sys crates, and CA roots for crates.io.
BUILD_PACKAGES=(protobuf-compiler libprotobuf-dev gcc libc6-dev pkg-config ca-certificates)

# interrupt_and_wait PID SECONDS WHAT: Ctrl-C (SIGINT) to PID, a child of this shell, then
# waits up to SECONDS for it to end; fails naming WHAT when it does not end in time or
# ends with an error.
interrupt_and_wait() {
    local pid="$1" seconds="$2" what="$3"
    kill -INT "$pid"
    for _ in $(seq 1 $((seconds * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "$what did not stop within $seconds s of Ctrl-C"
    wait "$pid" || die "$what exited with status $? after Ctrl-C"
}

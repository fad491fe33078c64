# start_registry DIR ADDRESS [HTPASSWD]: starts a real registry (Debian docker-registry)
# on ADDRESS (HOST:PORT) with its storage in DIR/storage, requiring the users in the
# HTPASSWD file (bcrypt, `htpasswd -B`) when one is given; waits until it answers and
# sets REGISTRY_PID and REGISTRY_ADDRESS. The caller kills $REGISTRY_PID on exit.
# shellcheck shell=bash

# install_registry PKG...: installs docker-registry (and the other packages given). When
# this installs docker-registry on a systemd machine, the package's own service — on
# :5000 of every interface, with a config that wants editing — is stopped and disabled:
# orch's scripts run their registries themselves, on addresses they choose.
install_registry() {
    local had=1
    dpkg-query -W -f='${Status}' docker-registry 2>/dev/null | grep -q "install ok installed" || had=0
    install_packages docker-registry "$@"
    if [ "$had" = 0 ] && [ -d /run/systemd/system ]; then
        step "disabling the docker-registry package's own service (orch runs its registries itself)"
        systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
    fi
}

start_registry() {
    local dir="$1" address="$2" htpasswd="${3:-}" answers=""
    step "starting docker-registry on $address${htpasswd:+ (htpasswd)}"
    mkdir -p "$dir"
    {
        printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s/storage\n  delete:\n    enabled: true\n' "$dir"
        printf 'http:\n  addr: %s\n' "$address"
        if [ -n "$htpasswd" ]; then
            printf 'auth:\n  htpasswd:\n    realm: orch\n    path: %s\n' "$htpasswd"
        fi
    } >"$dir/config.yml"
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    REGISTRY_PID=$!
    REGISTRY_ADDRESS="$address"
    # /v2/ answers 200, or 401 behind htpasswd: either way the registry is up.
    for _ in $(seq 1 100); do
        answers="$(curl -sS -o /dev/null -w '%{http_code}' "http://$address/v2/" 2>/dev/null || true)"
        case "$answers" in 200 | 401) break ;; esac
        kill -0 "$REGISTRY_PID" 2>/dev/null || { cat "$dir/registry.log" >&2; die "docker-registry on $address exited during start-up"; }
        sleep 0.1
    done
    case "$answers" in
        200 | 401) ;;
        *) cat "$dir/registry.log" >&2; die "docker-registry did not answer on $address (HTTP ${answers:-nothing})" ;;
    esac
}

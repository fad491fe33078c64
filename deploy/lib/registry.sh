# start_registry DIR ADDRESS [HTPASSWD]: starts a real registry (Debian docker-registry)
# on ADDRESS (HOST:PORT) with its storage in DIR/storage, requiring the users in the
# HTPASSWD file (bcrypt, `htpasswd -B`) when one is given; waits until it answers and
# sets REGISTRY_PID and REGISTRY_ADDRESS. The caller kills $REGISTRY_PID on exit.
# shellcheck shell=bash

# install_registry PKG...: installs docker-registry (its own service — on :5000 of every
# interface, with a config that wants editing — never started: install_without_services)
# and the other packages given.
install_registry() {
    install_without_services docker-registry
    install_packages "$@"
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

# Installs what ectunnel's tests and demo need when it is absent (Debian/Ubuntu).
# Sourced by scripts/test and scripts/demo.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    echo "installing $* from the distribution's packages..." >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# redis-server (built with TLS, as Debian's is) for the upstream stand-in; redis-cli for the demo.
ensure_redis() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v openssl >/dev/null || missing+=(openssl)
    # redis-py's RedisCluster, which the cluster-mode tests drive through the tunnel (with the
    # distribution's python, whatever else is first on PATH).
    /usr/bin/python3 -c 'import redis.cluster' 2>/dev/null || missing+=(python3-redis)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# cargo-deny, which judges the dependency graph's licenses and sources (deny.toml).
ensure_cargo_deny() {
    command -v cargo-deny >/dev/null || cargo install --locked cargo-deny
}

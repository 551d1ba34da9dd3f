# A TLS-only redis-server stand-in for ElastiCache, and ectunnel processes in front of it.
# Sourced by scripts/demo and the benchmark scripts. Callers set `work` (a temp dir) and keep
# the `pids` array, killing them on exit.

# make_certs: a CA and a certificate for "localhost" in $work.
make_certs() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ectunnel demo CA" \
        -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\n' > "$work/san.ext"
    openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
        -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null
}

# start_tls_redis TOKEN: TLS-only redis-server on a free loopback port; sets redis_port.
start_tls_redis() {
    local token=$1 log="$work/redis.log"
    for _ in 1 2 3 4 5; do
        redis_port=$(( 20000 + RANDOM % 40000 ))
        : > "$log"
        redis-server --port 0 --bind 127.0.0.1 --tls-port "$redis_port" \
            --tls-cert-file "$work/server.pem" --tls-key-file "$work/server.key" \
            --tls-ca-cert-file "$work/ca.pem" --tls-auth-clients no \
            --requirepass "$token" --save "" --appendonly no --dir "$work" \
            --logfile "$log" --daemonize no &
        local pid=$!
        for _ in $(seq 100); do
            grep -q "Ready to accept" "$log" && { pids+=("$pid"); return 0; }
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill "$pid" 2>/dev/null || true
    done
    echo "redis-server did not start; its log:" >&2
    cat "$log" >&2
    return 1
}

# free_port: a loopback port nothing listens on now.
free_port() {
    local p
    while :; do
        p=$(( 20000 + RANDOM % 40000 ))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

# start_tunnel NAME CONFIG_FILE [ARGS...]: runs ectunnel ($bin) in the background; sets
# tunnel_pid and tunnel_port (read from its "listening" log line).
start_tunnel() {
    local name=$1 config=$2
    shift 2
    local log="$work/$name.log"
    : > "$log"
    "$bin" -c "$config" "$@" 2>"$log" &
    tunnel_pid=$!
    pids+=("$tunnel_pid")
    tunnel_port=""
    for _ in $(seq 200); do
        tunnel_port=$(sed -n 's/.*listening.*listen=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
        [ -n "$tunnel_port" ] && return 0
        kill -0 "$tunnel_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "ectunnel ($name) did not start; its log:" >&2
    cat "$log" >&2
    return 1
}

# tunnel_config FILE [LISTENER_LINES]: one listener on a free port in front of the stand-in,
# trusting the demo CA and injecting $REDIS_AUTH.
tunnel_config() {
    cat > "$1" <<TOML
[tls]
ca_file = "$work/ca.pem"        # the demo CA; against ElastiCache, omit it (Mozilla roots)

[auth]
password_env = "REDIS_AUTH"     # injected; the client sends no password

[[listener]]
name = "primary"
listen = "127.0.0.1:0"           # 0: any free port; on a bastion: 127.0.0.1:6379
upstream = "localhost:$redis_port"
${2:-}
TOML
}

# cpu_ticks PID: user+system CPU time of a process (all threads) in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# start_tls_cluster TOKEN: a TLS-only Redis Cluster of 3 primaries on free loopback ports
# (certificates from make_certs, the cluster bus on TLS too), created with
# `redis-cli --cluster create`; sets cluster_ports (the three TLS ports).
start_tls_cluster() {
    local token=$1 port n log
    cluster_ports=()
    for n in 1 2 3; do
        port=$(free_port)
        log="$work/cluster-$n.log"
        mkdir -p "$work/cluster-$n"
        redis-server --port 0 --bind 127.0.0.1 --tls-port "$port" --cluster-port "$(free_port)" \
            --tls-cert-file "$work/server.pem" --tls-key-file "$work/server.key" \
            --tls-ca-cert-file "$work/ca.pem" --tls-auth-clients no --tls-cluster yes \
            --cluster-enabled yes --cluster-config-file "$work/cluster-$n/nodes.conf" \
            --requirepass "$token" --masterauth "$token" --save "" --appendonly no \
            --dir "$work/cluster-$n" --logfile "$log" --daemonize no &
        pids+=("$!")
        for _ in $(seq 100); do grep -q "Ready to accept" "$log" 2>/dev/null && break; sleep 0.05; done
        cluster_ports+=("$port")
    done
    local addrs=()
    for port in "${cluster_ports[@]}"; do addrs+=("127.0.0.1:$port"); done
    redis-cli --tls --cacert "$work/ca.pem" --sni localhost -a "$token" --no-auth-warning \
        --cluster create "${addrs[@]}" --cluster-yes >"$work/cluster-create.log" 2>&1 || {
        cat "$work/cluster-create.log" >&2; return 1; }
    for _ in $(seq 200); do
        redis-cli --tls --cacert "$work/ca.pem" --sni localhost -a "$token" --no-auth-warning \
            -p "${cluster_ports[0]}" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' && return 0
        sleep 0.05
    done
    echo "the cluster did not reach cluster_state:ok" >&2
    return 1
}

# cluster_tunnel_config FILE TOKEN: one cluster listener on a free port in front of the
# cluster of start_tls_cluster, injecting TOKEN; node addresses are IPs, verified as localhost.
cluster_tunnel_config() {
    cat > "$1" <<TOML
[tls]
ca_file = "$work/ca.pem"
server_name = "localhost"
[auth]
password = "$2"
[[listener]]
name = "cluster"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:${cluster_ports[0]}"
TOML
}

# bench_cluster direct|PORT TOKEN N: redis-benchmark --cluster, SET and GET, 50 clients,
# straight to the cluster over TLS or through a tunnel's PORT; its CSV on stdout.
bench_cluster() {
    if [ "$1" = direct ]; then
        redis-benchmark --cluster --tls --cacert "$work/ca.pem" --sni localhost -h 127.0.0.1 \
            -p "${cluster_ports[0]}" -a "$2" -t set,get -n "$3" -c 50 --csv 2>/dev/null
    else
        redis-benchmark --cluster -h 127.0.0.1 -p "$1" -a "$2" -t set,get -n "$3" -c 50 \
            --csv 2>/dev/null
    fi
}

# Interleaved CPU-per-request rounds over several running tunnels. Sourced by the bench scripts;
# callers fill the associative arrays `pid` and `port` (by mode name) and set `work`.

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2 }'; }

# cpu_rounds ROUNDS REQUESTS CLIENTS MODE...: per round, each mode (order rotated every round so
# none always runs first) gets `redis-benchmark -t set,get -n REQUESTS -c CLIENTS`; prints each
# run, then per mode the medians of requests/s and of tunnel CPU time per request (user+sys from
# /proc/<pid>/stat), and sets med_rps[MODE] and med_cpu[MODE].
declare -A med_rps med_cpu
cpu_rounds() {
    local rounds=$1 requests=$2 clients=$3
    shift 3
    local modes=("$@") hz results="$work/cpu-results" r k mode before after rps cpu_us
    hz=$(getconf CLK_TCK)
    : > "$results"
    for r in $(seq "$rounds"); do
        k=$(( (r - 1) % ${#modes[@]} ))
        for mode in "${modes[@]:k}" "${modes[@]:0:k}"; do
            before=$(cpu_ticks "${pid[$mode]}")
            redis-benchmark -h 127.0.0.1 -p "${port[$mode]}" -t set,get -n "$requests" -c "$clients" --csv > "$work/out.csv"
            after=$(cpu_ticks "${pid[$mode]}")
            rps=$(awk -F'"' 'NR>1 { s += $4 } END { printf "%.0f", s / (NR-1) }' "$work/out.csv")
            cpu_us=$(awk -v t=$((after - before)) -v hz="$hz" -v n=$((2 * requests)) 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
            echo "$mode $rps $cpu_us" >> "$results"
            printf 'round %s %-12s %8s req/s  %6s us CPU/request\n' "$r" "$mode" "$rps" "$cpu_us"
        done
    done
    for mode in "${modes[@]}"; do
        med_rps[$mode]=$(awk -v m="$mode" '$1 == m { print $2 }' "$results" | median)
        med_cpu[$mode]=$(awk -v m="$mode" '$1 == m { print $3 }' "$results" | median)
        echo "median $mode: ${med_rps[$mode]} req/s, ${med_cpu[$mode]} us CPU/request"
    done
}

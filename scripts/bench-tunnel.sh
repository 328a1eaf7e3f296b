#!/usr/bin/env bash
# Benchmarks the attested tunnel on loopback, side by side on one nginx upstream, interleaved over rounds:
#   direct   curl/ab → nginx
#   stunnel  curl/ab → stunnel4 client → TLS 1.3 → stunnel4 server → nginx
#   caid     curl/ab → caid tunnel (HTTP proxy) → TLS 1.3 + HTTP/2 → caid gateway (mapping mode) → nginx
# nginx serves a 1 GiB file, a 100-byte file and (proxied to Tests/peers/echo_server.py) a 1,000-chunk stream.
# Measures bulk throughput (1 and 4 parallel), small-request latency on an established connection with downstream
# keep-alive (p50/p99), requests/s with 64 concurrent ab clients (with and without -k), per-chunk latency of 100
# concurrent streams, and CPU seconds per GiB of each tunnel's processes. Medians over the rounds go into
# docs/benchmarks.md with the commands. Needs: nginx, stunnel4, ab, curl, python3 (scripts/install-deps.sh).
# Usage: scripts/bench-tunnel.sh [rounds]   (default 3; one run takes about 6 minutes)
# The caid side uses the SAMPLE attester and the test Attestation Service: the TLS, HTTP/2 and verification work are
# real, the evidence is not a TEE's.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rounds=${1:-3}
work=$(mktemp -d /tmp/caid-bench-tunnel.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${CAID_BIN:-}" ]; then
    caid=$CAID_BIN  # to try the script itself with another build
else
    echo "== release build (under the build lock)"
    flock /tmp/swift-build.lock swift build -c release --product caid >/dev/null
    caid="$root/.build/release/caid"
fi

port() { echo $((20000 + RANDOM % 12000)); }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }
wait_file() { for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "no $1" >&2; exit 1; }

echo "== upstream: nginx with 1 GiB, 100 B and a 1,000-chunk stream"
mkdir -p "$work/www" "$work/tmp"
truncate -s 1G "$work/www/large"
head -c 100 /dev/zero | tr '\0' s > "$work/www/small"
python3 Tests/peers/echo_server.py --port-file "$work/echo.port" --events "$work/echo.events" & pids+=($!)
wait_file "$work/echo.port"
nginx_port=$(port)
cat > "$work/nginx.conf" <<CONF
user root; worker_processes 2; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http {
    access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
    client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
    server {
        listen 127.0.0.1:$nginx_port; root $work/www;
        location /stream { proxy_pass http://127.0.0.1:$(cat "$work/echo.port"); proxy_http_version 1.1; proxy_buffering off; }
    }
}
CONF
nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
wait_port "$nginx_port"

echo "== stunnel4 pair (TLS 1.3)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench \
    -keyout "$work/stunnel.key" -out "$work/stunnel.pem" 2>/dev/null
st_server=$(port); st_client=$(port)
cat > "$work/stunnel-server.conf" <<CONF
foreground = yes
pid =
[server]
accept = 127.0.0.1:$st_server
connect = 127.0.0.1:$nginx_port
cert = $work/stunnel.pem
key = $work/stunnel.key
sslVersionMin = TLSv1.3
CONF
cat > "$work/stunnel-client.conf" <<CONF
foreground = yes
pid =
[client]
client = yes
accept = 127.0.0.1:$st_client
connect = 127.0.0.1:$st_server
sslVersionMin = TLSv1.3
CONF
stunnel4 "$work/stunnel-server.conf" 2>"$work/stunnel-server.log" & st_server_pid=$!; pids+=($st_server_pid)
stunnel4 "$work/stunnel-client.conf" 2>"$work/stunnel-client.log" & st_client_pid=$!; pids+=($st_client_pid)
wait_port "$st_server"; wait_port "$st_client"

echo "== caid gateway (mapping mode, sample attester) and caid tunnel"
python3 Tests/peers/trustee_server.py --dialect current --port-file "$work/as.port" >/dev/null 2>&1 & pids+=($!)
wait_file "$work/as.port"
gw_port=$(port); tunnel_port=$(port)
cat > "$work/cai.env" <<ENV
TRUSTEE_URL="http://127.0.0.1:$(cat "$work/as.port")/"
TRUSTEE_POLICY="default"
MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
MODEL_ENCRYPTION_METHOD="gocryptfs"
MODEL_OSS_BUCKET_PATH="models:/bench"
MODEL_OSS_ENDPOINT="http://127.0.0.1:1"
MODEL_OSS_ACCESS_KEY_ID="bench"
MODEL_OSS_SECRET_ACCESS_KEY="bench"
MODEL_OSS_SESSION_TOKEN=
MODEL_SERVICE_PORT=$nginx_port
MODEL_MOUNT_POINT=$work/mnt
CAID_HEALTH_SOCKET=$work/caid.sock
CAID_CACHE_DIR=$work/cache
CAID_ATTESTER=sample
CAID_GATEWAY_MODE=mapping
CAID_GATEWAY_PORT=$gw_port
CAID_LOG_LEVEL=warning
ENV
chmod 600 "$work/cai.env"
"$caid" gateway --env "$work/cai.env" 2>"$work/gateway.log" & gw_pid=$!; pids+=($gw_pid)
"$caid" tunnel --listen "127.0.0.1:$tunnel_port" --as-addr "http://127.0.0.1:$(cat "$work/as.port")/as/" --log-level warning >"$work/tunnel.log" 2>&1 & tunnel_pid=$!; pids+=($tunnel_pid)
wait_port "$gw_port"; wait_port "$tunnel_port"
curl -sf -o /dev/null -x "http://127.0.0.1:$tunnel_port" "http://127.0.0.1:$gw_port/small" || { echo "the caid tunnel does not work:" >&2; cat "$work/gateway.log" "$work/tunnel.log" >&2; exit 1; }

# How each mode is reached: curl options, the URL base, ab's proxy option, the processes whose CPU counts.
mode_curl() { case $1 in direct) echo "";; stunnel) echo "";; caid) echo "-x http://127.0.0.1:$tunnel_port";; esac; }
mode_base() { case $1 in direct) echo "http://127.0.0.1:$nginx_port";; stunnel) echo "http://127.0.0.1:$st_client";; caid) echo "http://127.0.0.1:$gw_port";; esac; }
mode_ab() { case $1 in caid) echo "-X 127.0.0.1:$tunnel_port";; *) echo "";; esac; }
mode_proxy() { case $1 in caid) echo "--proxy $tunnel_port";; *) echo "";; esac; }
mode_pids() { case $1 in direct) echo "";; stunnel) echo "$st_client_pid $st_server_pid";; caid) echo "$tunnel_pid $gw_pid";; esac; }
cpu_ticks() { local total=0; for pid in "$@"; do read -r -a f < "/proc/$pid/stat"; total=$((total + f[13] + f[14])); done; echo $total; }
hz=$(getconf CLK_TCK)
calc() { awk "BEGIN { print $1 }"; }

results="$work/results.tsv"
: > "$results"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$results"; }

bulk() {  # mode: 1 GiB once (MB/s, CPU s/GiB), then 4 in parallel (MB/s total)
    local mode=$1 base; base=$(mode_base "$mode")
    local before after start end
    before=$(cpu_ticks $(mode_pids "$mode"))
    start=$(date +%s.%N)
    # shellcheck disable=SC2046
    curl -sf -o /dev/null $(mode_curl "$mode") "$base/large"
    end=$(date +%s.%N)
    after=$(cpu_ticks $(mode_pids "$mode"))
    record "$mode" bulk1_MBps "$(calc "1073.741824 / ($end - $start)")"
    record "$mode" cpu_s_per_GiB "$(calc "($after - $before) / $hz")"
    start=$(date +%s.%N)
    for _ in 1 2 3 4; do
        # shellcheck disable=SC2046
        curl -sf -o /dev/null $(mode_curl "$mode") "$base/large" &
    done
    wait_jobs
    end=$(date +%s.%N)
    record "$mode" bulk4_MBps "$(calc "4 * 1073.741824 / ($end - $start)")"
}
wait_jobs() { for job in $(jobs -p); do case " ${pids[*]} " in *" $job "*) ;; *) wait "$job";; esac; done; }

latency() {
    local mode=$1 out
    # shellcheck disable=SC2046
    out=$(python3 scripts/bench_tunnel_client.py latency --url "$(mode_base "$mode")/small" $(mode_proxy "$mode") --count 2000)
    record "$mode" small_p50_us "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p50_us"])')"
    record "$mode" small_p99_us "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_us"])')"
}

rps() {
    local mode=$1 keep=$2 out
    # shellcheck disable=SC2046
    out=$(ab -q -s 30 $keep -n 20000 -c 64 $(mode_ab "$mode") "$(mode_base "$mode")/small" 2>&1)
    local failed; failed=$(echo "$out" | awk '/^Failed requests:/ {print $3}')
    [ "${failed:-x}" = 0 ] || { echo "ab $keep against $mode: failed requests: ${failed:-none finished}" >&2; echo "$out" | tail -5 >&2; }
    record "$mode" "rps${keep:+_k}" "$(echo "$out" | awk '/^Requests per second:/ {print $4}')"
}

streams() {
    local mode=$1 out
    # shellcheck disable=SC2046
    out=$(python3 scripts/bench_tunnel_client.py stream --url "$(mode_base "$mode")/stream?chunks=1000&delay=0.005" $(mode_proxy "$mode") --streams 100)
    record "$mode" chunk_p50_us "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p50_us"])')"
    record "$mode" chunk_p99_us "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_us"])')"
}

modes=(direct stunnel caid)
for round in $(seq 1 "$rounds"); do
    echo "== round $round of $rounds"
    for mode in "${modes[@]}"; do bulk "$mode"; done
    for mode in "${modes[@]}"; do latency "$mode"; done
    for mode in "${modes[@]}"; do rps "$mode" ""; rps "$mode" -k; done
    for mode in "${modes[@]}"; do streams "$mode"; done
done

echo "== results (medians of $rounds rounds)"
table=$(python3 - "$results" "$rounds" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
data = {}
for mode, metric, value in rows:
    if value not in ("", "None"):
        data.setdefault(metric, {}).setdefault(mode, []).append(float(value))
med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in data.items()}
def get(metric, mode):
    return med.get(metric, {}).get(mode)
def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"
def ratio(a, b):
    return "–" if a is None or b in (None, 0) else f"{a / b:.2f}x"
lines = ["| measure | direct | stunnel | caid | caid / stunnel |", "|---|---:|---:|---:|---:|"]
for metric, label, digits in [("bulk1_MBps", "1 GiB download, MB/s", 0), ("bulk4_MBps", "4 × 1 GiB in parallel, MB/s total", 0),
                              ("rps", "ab -c 64 (new connection per request), requests/s", 0), ("rps_k", "ab -k -c 64 (keep-alive), requests/s", 0),
                              ("chunk_p50_us", "100 streams × 1,000 chunks: per-chunk latency p50, µs", 0), ("chunk_p99_us", "… p99, µs", 0)]:
    lines.append(f"| {label} | {fmt(get(metric, 'direct'), digits)} | {fmt(get(metric, 'stunnel'), digits)} | {fmt(get(metric, 'caid'), digits)} | {ratio(get(metric, 'caid'), get(metric, 'stunnel'))} |")
d50, d99 = get("small_p50_us", "direct"), get("small_p99_us", "direct")
for metric, label, base in [("small_p50_us", "small request on an established connection, p50, µs (added over direct)", d50),
                            ("small_p99_us", "… p99, µs (added over direct)", d99)]:
    s, c = get(metric, "stunnel"), get(metric, "caid")
    added = lambda v: "–" if v is None or base is None else f"{v:,.0f} (+{v - base:,.0f})"
    lines.append(f"| {label} | {fmt(base)} | {added(s)} | {added(c)} | {ratio(None if c is None or base is None else c - base, None if s is None or base is None else s - base)} |")
lines.append(f"| CPU seconds per GiB, both tunnel processes | – | {fmt(get('cpu_s_per_GiB', 'stunnel'), 2)} | {fmt(get('cpu_s_per_GiB', 'caid'), 2)} | {ratio(get('cpu_s_per_GiB', 'caid'), get('cpu_s_per_GiB', 'stunnel'))} |")
print("\n".join(lines))
PY
)
echo "$table"

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(nginx -v 2>&1 | sed 's/nginx version: //'), $(stunnel4 -version 2>&1 | head -1 | awk '{print $1, $2}'), $(openssl version | awk '{print $1, $2}')"
section=$(cat <<MD
<!-- bench-tunnel:start -->
## The attested tunnel against stunnel (scripts/bench-tunnel.sh)

$(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo "+changes"), $machine; medians of $rounds interleaved rounds, all on loopback.
Release build. caid uses the sample attester (real TLS 1.3, HTTP/2 and token verification; no TEE evidence).

$table

How each figure is made (\`\$P\` = caid tunnel's port, \`\$G\` = the gateway, \`\$S\` = stunnel's client port, \`\$N\` = nginx):
- bulk: \`curl -sf -o /dev/null [-x http://127.0.0.1:\$P] http://127.0.0.1:{\$N|\$S|\$G}/large\` (1 GiB), once and 4 at a time;
  CPU: utime+stime from /proc of both tunnel processes (stunnel client + server; caid tunnel + caid gateway) over the single download.
- small latency: \`python3 scripts/bench_tunnel_client.py latency --url …/small [--proxy \$P] --count 2000\` (one kept-alive connection, after 50 warm-up requests).
- requests/s: \`ab -q -s 30 [-k] -n 20000 -c 64 [-X 127.0.0.1:\$P] …/small\`.
- streams: \`python3 scripts/bench_tunnel_client.py stream --url '…/stream?chunks=1000&delay=0.005' [--proxy \$P] --streams 100\`
  (nginx proxies /stream to Tests/peers/echo_server.py; each chunk carries its send time).
- stunnel4: client and server, \`sslVersionMin = TLSv1.3\`, P-256 certificate; caid: \`caid gateway\` (CAID_GATEWAY_MODE=mapping) and \`caid tunnel\`.
<!-- bench-tunnel:end -->
MD
)
python3 - docs/benchmarks.md "$section" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
if "<!-- bench-tunnel:start -->" in text:
    text = re.sub(r"<!-- bench-tunnel:start -->.*?<!-- bench-tunnel:end -->", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
echo "== docs/benchmarks.md updated"

#!/usr/bin/env bash
# The gateway under abuse (issue #16), on loopback only, bounded in count and time (the load generator gives up after
# 10 minutes): a full `caid run` (sample attester, the test KBS/AS and OSS servers, a real FUSE mount, mapping mode)
# with its descriptor limit at 4096, an echo service behind the gateway, and scripts/load_gateway.py as the strangers:
# 1000 idle TLS connections and 256 stalled ClientHellos from 127.0.0.1 while a client from 127.0.0.2 tunnels, then
# 2000 and 3000 concurrent streams, with `caid health` run every half second throughout. Prints the JSON report
# and keeps it in $OUT (default .cache/load-gateway.json). Needs root (FUSE). Usage: scripts/load-gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${OUT:-$root/.cache/load-gateway.json}
idle=${IDLE:-1000}
stalled=${STALLED:-256}
streams=${STREAMS:-2000 3000}
nofile=${NOFILE:-4096}
rounds=${ROUNDS:-3}
caid=${CAID:-$root/.build/debug/caid}
[ -x "$caid" ] || flock /tmp/swift-build.lock swift build --product caid
mkdir -p "$(dirname "$out")"

work=$(mktemp -d /tmp/caid-load-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt" || true
    rm -rf "$work"
}
trap cleanup EXIT
wait_for_file() { for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "load: $1 did not appear" >&2; exit 1; }
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

mkdir -p "$work/model" "$work/bucket" "$work/mnt"
echo '{"hidden_size": 64}' > "$work/model/config.json"
head -c 24 /dev/urandom | base64 > "$work/password"
"$caid" encrypt --plain "$work/model" --cipher "$work/bucket/m" --passfile "$work/password" >/dev/null
python3 Tests/peers/oss_server.py --root "$work/bucket" --bucket models --ak LTAIload --sk load-secret --region cn-load --port-file "$work/oss.port" >/dev/null &
pids+=($!)
python3 Tests/peers/trustee_server.py --dialect current --prefix /trustee/ \
    --resource "default/aliyun/model-decryption-key=$work/password" --port-file "$work/kbs.port" >/dev/null 2>&1 &
pids+=($!)
service_port=$(port)
python3 scripts/load_gateway.py echo --port "$service_port" &
pids+=($!)
wait_for_file "$work/oss.port"; wait_for_file "$work/kbs.port"
gateway_port=$(port)
cat > "$work/cai.env" <<ENV
TRUSTEE_URL="http://127.0.0.1:$(cat "$work/kbs.port")/trustee/"
TRUSTEE_POLICY="default"
MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
MODEL_ENCRYPTION_METHOD="gocryptfs"
MODEL_OSS_BUCKET_PATH="models:/m"
MODEL_OSS_ENDPOINT="http://127.0.0.1:$(cat "$work/oss.port")"
MODEL_OSS_ACCESS_KEY_ID="LTAIload"
MODEL_OSS_SECRET_ACCESS_KEY="load-secret"
MODEL_SERVICE_PORT=$service_port
MODEL_MOUNT_POINT=$work/mnt
CAID_HEALTH_SOCKET=$work/caid.sock
CAID_CACHE_DIR=$work/cache
CAID_OSS_REGION=cn-load
CAID_ATTESTER=sample
CAID_GATEWAY_MODE=mapping
CAID_GATEWAY_PORT=$gateway_port
CAID_SERVICE_GUARD=off
ENV
chmod 600 "$work/cai.env"

# WRAP runs caid under a tool, e.g. WRAP="heaptrack -o /tmp/caid-heap" (then with CAID_WIPING_FREED_MEMORY=1, so
# that caid does not re-execute itself out of the tool's preload).
# shellcheck disable=SC2086
prlimit --nofile="$nofile:$nofile" ${WRAP:-} "$caid" run --env "$work/cai.env" 2>"$work/caid.log" &
caid_pid=$!
pids+=($caid_pid)
for i in $(seq 1 240); do
    "$caid" health --socket "$work/caid.sock" >/dev/null 2>&1 && break
    [ "$i" = 240 ] && { echo "load: caid did not get ready; its log:" >&2; cat "$work/caid.log" >&2; exit 1; }
    sleep 0.5
done
# prlimit and caid's own re-execution (freed-memory wiping) both exec: $caid_pid is the process that serves, unless
# a WRAP tool runs it as its child.
if [ -n "${WRAP:-}" ]; then caid_pid=$(pgrep -nf -- "$caid run --env $work/cai.env"); pids+=("$caid_pid"); fi
ulimit -n "$(ulimit -Hn)"  # the strangers hold more than 1024 sockets
# shellcheck disable=SC2086
python3 scripts/load_gateway.py load --gateway-port "$gateway_port" --caid-pid "$caid_pid" --caid "$caid" \
    --health-socket "$work/caid.sock" --idle "$idle" --stalled "$stalled" --streams $streams --rounds "$rounds" | tee "$out"
if grep -q "Too many open files\|EMFILE" "$work/caid.log"; then
    echo "load: caid met its descriptor limit:" >&2; grep -m5 "Too many open files\|EMFILE" "$work/caid.log" >&2; exit 1
fi
kill -0 "$caid_pid" 2>/dev/null || { echo "load: caid exited under load; its log:" >&2; tail -50 "$work/caid.log" >&2; exit 1; }
echo "load: report in $out"
if [ -n "${HOLD:-}" ]; then echo "load: caid (pid $caid_pid) stays up ${HOLD} s for inspection"; sleep "$HOLD"; fi

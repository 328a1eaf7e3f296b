#!/usr/bin/env bash
# Benchmark (issue #18): from start to the model read. Three setups against the same ciphertext on loopback, the
# servers throttled to one shared rate by scripts/throttle_proxy.py (no proxy when unthrottled):
#   caid-stream  caid run, CAID_MOUNT_STREAMING=on (mount once the key and the listing are there)
#   caid-off     caid run, CAID_MOUNT_STREAMING=off (download everything, then mount)
#   s3fs-*       s3fs on a bucket served by moto, gocryptfs -ro on top (the CAI stack's ossfs + gocryptfs), with s3fs's
#                defaults and with the fastest options found
# plus `caid fetch` of the same prefix alone (the download). For each: the key, the model files listed, the first byte
# of the first shard and the last byte of the last shard, by a reader that reads every shard in full as a model loader
# does (scripts/bench_startup.py). Caches dropped before every setup; caid's cache wiped between caid runs.
# Prints a table and appends it to docs/benchmarks.md.
#
# Usage: sudo scripts/bench-startup.sh [--rate MBPS]... [--size-mib N] [--rounds N] [--setups a,b] [--no-doc]
#   --rate 0 (or max) is the unthrottled loopback rate; default: --rate 200 --rate max. MB = 10^6 bytes.
#   CAID=path chooses the binary (default .build/release/caid). The encrypted model is kept in
#   .cache/bench-startup/model-N between runs (FRESH=1 makes it again).
#   BENCH_PERF=PREFIX profiles CPU 0 (perf record -g) from each caid run's start to its last byte read, into PREFIX-<env>.data.
# Needs root (FUSE, drop_caches), s3fs, gocryptfs, curl (apt-get install s3fs gocryptfs curl) and
# pip install 'moto[server]' boto3 alibabacloud-oss-v2.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
command_line="scripts/bench-startup.sh $*"
rates=() size_mib=1024 rounds=${ROUNDS:-2} setups="" doc=$root/docs/benchmarks.md
while [ $# -gt 0 ]; do
    case $1 in
        --rate) [ "$2" = max ] && rates+=(0) || rates+=("$2"); shift 2 ;;
        --size-mib) size_mib=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --setups) setups=$2; shift 2 ;;
        --no-doc) doc=""; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-startup: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#rates[@]} -gt 0 ] || rates=(200 0)
[ "$(id -u)" = 0 ] || { echo "bench-startup: needs root (FUSE mounts, drop_caches)" >&2; exit 1; }
for tool in s3fs gocryptfs fusermount3 curl python3; do
    command -v $tool >/dev/null || { echo "bench-startup: needs $tool (apt-get install s3fs gocryptfs fuse3 curl)" >&2; exit 1; }
done
python3 -c 'import moto, boto3, alibabacloud_oss_v2' 2>/dev/null ||
    { echo "bench-startup: needs pip install 'moto[server]' boto3 alibabacloud-oss-v2" >&2; exit 1; }
caid=$(realpath "${CAID:-.build/release/caid}")
[ -x "$caid" ] || { echo "bench-startup: no caid at $caid (swift build -c release --product caid, or CAID=path)" >&2; exit 1; }
caid_label=${CAID:-.build/release/caid}
cache=$root/.cache/bench-startup
[ -n "${FRESH:-}" ] && rm -rf "$cache/model-$size_mib"
mkdir -p "$cache"

work=$(mktemp -d /tmp/caid-bench-startup.XXXXXX)
tmpfs=$(mktemp -d /dev/shm/caid-bench-startup.XXXXXX)  # the servers' ciphertext: not emptied by drop_caches
driver=""
cleanup() {
    # The driver ends its own children and mounts; this is for when it could not (killed, crashed).
    set +e
    if [ -n "$driver" ] && kill "$driver" 2>/dev/null; then
        for _ in $(seq 1 60); do kill -0 "$driver" 2>/dev/null || break; sleep 0.5; done
    fi
    if [ -f "$work/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null; done < "$work/pids"
        sleep 1  # caid unmounts on SIGTERM
    fi
    if [ -f "$work/mounts" ]; then
        tac "$work/mounts" | while read -r m; do
            if mountpoint -q "$m" 2>/dev/null; then fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; fi
        done
    fi
    rm -rf "$tmpfs"
    if [ -n "${KEEP:-}" ]; then echo "bench-startup: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

args=(bench --work "$work" --tmpfs "$tmpfs" --cache "$cache" --caid "$caid" --caid-label "$caid_label"
      --size-mib "$size_mib" --rounds "$rounds" --command "$command_line")
for r in "${rates[@]}"; do args+=(--rate "$r"); done
[ -n "$setups" ] && args+=(--setups "$setups")
if [ -n "$doc" ] && ! grep -q '^### Startup: from start to the model read' "$doc"; then
    cat >> "$doc" <<'DOC'

### Startup: from start to the model read

`scripts/bench-startup.sh` (issue #18). See the notes below the first table for what each column means.
DOC
fi
[ -n "$doc" ] && args+=(--doc "$doc")
python3 scripts/bench_startup.py "${args[@]}" &
driver=$!
wait "$driver"

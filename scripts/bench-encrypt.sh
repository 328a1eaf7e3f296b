#!/usr/bin/env bash
# Benchmark: encrypt a 1 GiB model directory with `caid encrypt` and with gocryptfs through its own mount
# (init, mount, copy, unmount). Appends the rates to docs/benchmarks.md.
# Needs root (FUSE), gocryptfs, and a release build: swift build -c release --product caid
set -euo pipefail
cd "$(dirname "$0")/.."
command -v bc >/dev/null || { echo "needs bc: apt-get install bc" >&2; exit 1; }
caid=${CAID:-.build/release/caid}
size_mib=${SIZE_MIB:-1024}
work=$(mktemp -d /tmp/caid-bench-encrypt.XXXXXX)
cleanup() {
    mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -u "$work/mnt" || true
    rm -rf "$work"
}
trap cleanup EXIT

printf 'bench-password' > "$work/pw"
mkdir -p "$work/model" "$work/mnt"
# A model directory: one large weights file, a few shards, config and tokenizer files.
head -c $((size_mib * 3 / 4 << 20)) /dev/urandom > "$work/model/model-00001-of-00002.safetensors"
for i in 1 2 3 4; do head -c $((size_mib / 16 << 20)) /dev/urandom > "$work/model/extra-$i.bin"; done
for f in config.json tokenizer.json tokenizer_config.json generation_config.json; do head -c 200000 /dev/urandom | base64 > "$work/model/$f"; done
total_mb=$(du -sb "$work/model" | awk '{printf "%.0f", $1 / 1000000}')
# Each run starts from the same state: writeback done, caches dropped, the model (only) read back into the cache.
settle() { sync; echo 3 > /proc/sys/vm/drop_caches; cat "$work"/model/* > /dev/null; }

now() { date +%s.%N; }
settle
start=$(now)
mkdir "$work/gcipher"
gocryptfs -q -init -passfile "$work/pw" "$work/gcipher" 2>/dev/null
gocryptfs -q -passfile "$work/pw" "$work/gcipher" "$work/mnt" 2>/dev/null
cp -a "$work/model/." "$work/mnt/"
fusermount3 -u "$work/mnt"
g_done=$(printf '%.2f' "$(echo "$(now) - $start" | bc)")
sync
g_synced=$(printf '%.2f' "$(echo "$(now) - $start" | bc)")

settle
start=$(now)
"$caid" encrypt --plain "$work/model" --cipher "$work/ccipher" --passfile "$work/pw" >/dev/null 2>&1
c_done=$(printf '%.2f' "$(echo "$(now) - $start" | bc)")
sync
c_synced=$(printf '%.2f' "$(echo "$(now) - $start" | bc)")

rate() { echo "scale=0; $total_mb / $1" | bc; }
ratio() { echo "scale=1; $1 / $2" | bc; }
echo "done:   gocryptfs $(rate "$g_done") MB/s, caid $(rate "$c_done") MB/s, ratio $(ratio "$g_done" "$c_done")x"
echo "synced: gocryptfs $(rate "$g_synced") MB/s, caid $(rate "$c_synced") MB/s, ratio $(ratio "$g_synced" "$c_synced")x"
{
    echo
    echo "### Encryption throughput, $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r))"
    echo
    echo "Command: \`sudo scripts/bench-encrypt.sh\` (SIZE_MIB=$size_mib). A $total_mb MB model directory (one large file,"
    echo "four shards, four small JSON files) read from the page cache. gocryptfs: \`-init\`, mount, \`cp -a\`, unmount;"
    echo "caid: \`caid encrypt\`. Both include the scrypt key derivation. \"done\" is when the command returns (data in"
    echo "the page cache), \"synced\" adds \`sync\` (data on disk, which the disk's write speed dominates for both)."
    echo
    echo "| tool | done (s) | MB/s | synced (s) | MB/s |"
    echo "|---|---|---|---|---|"
    echo "| gocryptfs $(gocryptfs -version | head -1 | cut -d';' -f1 | cut -d' ' -f2) (mount + cp) | $g_done | $(rate "$g_done") | $g_synced | $(rate "$g_synced") |"
    echo "| caid encrypt | $c_done | $(rate "$c_done") | $c_synced | $(rate "$c_synced") |"
    echo
    echo "caid / gocryptfs: **$(ratio "$g_done" "$c_done")x** until done, **$(ratio "$g_synced" "$c_synced")x** until synced."
} >> docs/benchmarks.md

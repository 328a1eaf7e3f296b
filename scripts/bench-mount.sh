#!/usr/bin/env bash
# Benchmark: read a 1 GiB file through the caid mount and through gocryptfs's own mount of the same ciphertext,
# cold (page cache dropped), cached (the ciphertext in the page cache, the plaintext not: a load right after the
# download) and warm (both cached), with 1 and 4 readers. Appends the figures to docs/benchmarks.md.
# Needs root (mounts, drop_caches), gocryptfs, and a release build: swift build -c release --product caid
set -euo pipefail
cd "$(dirname "$0")/.."
command -v bc >/dev/null || { echo "needs bc: apt-get install bc" >&2; exit 1; }
caid=${CAID:-.build/release/caid}
size_mib=${SIZE_MIB:-1024}
work=$(mktemp -d /tmp/caid-bench-mount.XXXXXX)
cleanup() {
    for m in "$work/gocryptfs" "$work/caid"; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" 2>/dev/null || true; done
    [ -n "${caid_pid:-}" ] && kill "$caid_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

printf 'bench-password' > "$work/pw"
mkdir -p "$work/plain" "$work/gocryptfs" "$work/caid"
head -c $((size_mib << 20)) /dev/urandom > "$work/plain/model.bin"
"$caid" encrypt --plain "$work/plain" --cipher "$work/cipher" --passfile "$work/pw" >/dev/null 2>&1
rm -f "$work/plain/model.bin"
cipher_file=$(find "$work/cipher" -type f -size +1M | head -1)

gocryptfs -q -ro -passfile "$work/pw" "$work/cipher" "$work/gocryptfs" 2>/dev/null
"$caid" mount --cipher "$work/cipher" --mountpoint "$work/caid" --passfile "$work/pw" > "$work/caid.log" 2>&1 &
caid_pid=$!
for _ in $(seq 100); do grep -q ready "$work/caid.log" && break; sleep 0.1; done

# Prints MB/s for reading the file with N parallel readers, each its own quarter (or the whole file for N=1).
read_rate() {
    local dir=$1 readers=$2 mode=$3
    local file="$dir/model.bin" part=$((size_mib / readers))
    if [ "$mode" = cold ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
    # The ciphertext in the page cache, the plaintext not (what a model load right after the download sees): drop
    # everything, then read the ciphertext file once.
    if [ "$mode" = cached ]; then sync; echo 3 > /proc/sys/vm/drop_caches; cat "$cipher_file" > /dev/null; fi
    local start end
    start=$(date +%s.%N)
    local pids=()
    for i in $(seq 0 $((readers - 1))); do
        dd if="$file" of=/dev/null bs=1M skip=$((i * part)) count=$part status=none &
        pids+=($!)
    done
    wait "${pids[@]}"
    end=$(date +%s.%N)
    echo "scale=0; $size_mib * 1.048576 / ($end - $start)" | bc
}

# The disk's own ceiling: the ciphertext file read cold, no decryption.
sync; echo 3 > /proc/sys/vm/drop_caches
start=$(date +%s.%N); dd if="$cipher_file" of=/dev/null bs=1M status=none; end=$(date +%s.%N)
raw=$(echo "scale=0; $size_mib * 1.048576 / ($end - $start)" | bc)
echo "raw ciphertext, cold: $raw MB/s"

results=()
for readers in 1 4; do
    for mode in cold cached warm; do
        # A warm run follows a read that filled the cache.
        if [ "$mode" = warm ]; then read_rate "$work/gocryptfs" "$readers" warm >/dev/null; read_rate "$work/caid" "$readers" warm >/dev/null; fi
        g=$(read_rate "$work/gocryptfs" "$readers" "$mode")
        c=$(read_rate "$work/caid" "$readers" "$mode")
        ratio=$(echo "scale=1; $c / $g" | bc)
        results+=("| $mode | $readers | $g | $c | ${ratio}x |")
        echo "$mode, $readers reader(s): gocryptfs $g MB/s, caid $c MB/s, ratio ${ratio}x"
    done
done

{
    echo
    echo "### Mount read throughput, $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r))"
    echo
    echo "Command: \`sudo scripts/bench-mount.sh\` (SIZE_MIB=$size_mib). A ${size_mib} MiB random file encrypted with"
    echo "\`caid encrypt\`, read with \`dd bs=1M\` through \`gocryptfs -ro\` ($(gocryptfs -version | head -1 | cut -d';' -f1)) and \`caid mount\`"
    echo "on the same ciphertext; cold = after \`echo 3 > /proc/sys/vm/drop_caches\`; cached = dropped, then the ciphertext"
    echo "file read once with \`cat\`; 4 readers read one quarter each."
    echo
    echo "| cache | readers | gocryptfs MB/s | caid MB/s | caid / gocryptfs |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${results[@]}"
    echo
    echo "The disk's ceiling in the same run: the raw ciphertext file read cold with \`dd bs=1M\`: $raw MB/s."
} >> docs/benchmarks.md

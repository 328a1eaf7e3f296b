#!/usr/bin/env bash
# Cost of glibc's wiping of freed memory (GLIBC_TUNABLES as `caid run` sets it; docs/security.md) on the read path
# of the mount: a SIZE_MIB file encrypted with `caid encrypt`, read twice with dd through `caid mount`, the second
# (warm) read timed, with and without the tunables, ROUNDS times. Needs root and FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
caid=${CAID:-.build/release/caid}
size_mib=${SIZE_MIB:-512}
rounds=${ROUNDS:-2}
work=$(mktemp -d /tmp/caid-bench-wiping.XXXXXX)
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
    mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -u "$work/mnt" || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/plain" "$work/mnt"
printf 'bench-password' > "$work/pw"
head -c $((size_mib << 20)) /dev/urandom > "$work/plain/model.bin"
"$caid" encrypt --plain "$work/plain" --cipher "$work/cipher" --passfile "$work/pw" >/dev/null 2>&1
rm -f "$work/plain/model.bin"
tunables=glibc.malloc.perturb=165:glibc.malloc.tcache_count=0
for round in $(seq "$rounds"); do
    for mode in plain wiped; do
        if [ "$mode" = wiped ]; then env=(env GLIBC_TUNABLES=$tunables); else env=(env -u GLIBC_TUNABLES); fi
        "${env[@]}" "$caid" mount --cipher "$work/cipher" --mountpoint "$work/mnt" --passfile "$work/pw" > "$work/log" 2>&1 &
        pid=$!
        for _ in $(seq 100); do grep -q ready "$work/log" && break; sleep 0.1; done
        dd if="$work/mnt/model.bin" of=/dev/null bs=1M status=none
        start=$(date +%s.%N)
        dd if="$work/mnt/model.bin" of=/dev/null bs=1M status=none
        end=$(date +%s.%N)
        printf 'round %d %-6s %6.0f MB/s\n' "$round" "$mode" "$(echo "$size_mib * 1.048576 / ($end - $start)" | bc -l)"
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
        fusermount3 -u "$work/mnt" 2>/dev/null || true
    done
done

#!/usr/bin/env bash
# The VM test: installs caid's .deb in a Debian 12 guest with systemd as PID 1 and checks the unit for real
# (start until ready, health, journald fields, watchdog, kill -9 recovery, nat rules, a stop with the model in use,
# a container's bind across a restart, bad config, unreachable Trustee, a non-root reader, a reboot).
# Usage (root, on Debian 12): scripts/vm-test.sh [path/to/caid_<version>_amd64.deb]   (default: dist/caid_*_amd64.deb)
#
# The guest is debootstrapped once and cached in .cache/vm/ (keyed by scripts/vm/{packages.txt,build-image.sh,
# vmtest.service}); each run boots a fresh qcow2 overlay of it with qemu (KVM when it works, else software
# emulation) and no network device: the test OSS and Trustee servers (Tests/peers/) run inside the guest on loopback.
# scripts/vm/checks.sh runs the checks from a second disk and writes its results there; this script reads them
# back with debugfs, prints them and ends with `N passed, M failed`. Exit status 0 only if every check passed.
# Environment: VM_ONLY ("check names", space separated: the install and start checks and these only), VM_TIMEOUT (seconds for the whole qemu run, default 1080: a run against a package whose checks fail waits out their timeouts), VM_ACCEL (auto, kvm, tcg), VM_KEEP=1 (keep
# the run directory), VM_MIRROR (Debian mirror for debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
t_begin=$(date +%s)
timeout_s=${VM_TIMEOUT:-1080}
accel=${VM_ACCEL:-auto}

[ "$(id -u)" = 0 ] || { echo "vm-test: run as root (debootstrap, KVM)" >&2; exit 2; }
deb=${1:-}
if [ -z "$deb" ]; then deb=$(ls -t dist/caid_*_amd64.deb 2>/dev/null | head -1 || true); fi
[ -n "$deb" ] && [ -f "$deb" ] || { echo "vm-test: no .deb (give its path, or build one with scripts/package.sh)" >&2; exit 2; }
deb=$(realpath "$deb")

need=()
for tool in debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mkfs.ext4:e2fsprogs debugfs:e2fsprogs; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cache=$root/.cache/vm
mkdir -p "$cache"
key=$(cat scripts/vm/packages.txt scripts/vm/build-image.sh scripts/vm/vmtest.service | sha256sum | cut -c1-16)
image=$cache/image-$key
t_image=0
if [ ! -f "$image/rootfs.img" ]; then
    t0=$(date +%s)
    for old in "$cache"/image-*; do [ -e "$old" ] && [ "$old" != "$image" ] && rm -rf "$old"; done
    scripts/vm/build-image.sh "$image"
    t_image=$(( $(date +%s) - t0 ))
else
    echo "== guest image cached: $image"
fi

# alibabacloud-oss-v2 (the test OSS server's signer and CRC) is not packaged by Debian: its wheel from PyPI, once.
wheel=$(ls "$cache"/wheels/alibabacloud_oss_v2-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$cache/wheels" alibabacloud-oss-v2
    wheel=$(ls "$cache"/wheels/alibabacloud_oss_v2-*.whl | head -1)
fi

run=$(mktemp -d "$cache/run.XXXXXX")
qemu_pid=""
tail_pid=""
cleanup() {
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null || true
    if [ "${VM_KEEP:-0}" = 1 ]; then echo "vm-test: kept $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The payload disk: the package, the peers, the checks; the guest writes its results onto it.
mkdir -p "$run/payload/peers" "$run/payload/pylib"
cp "$deb" "$run/payload/caid.deb"
cp Tests/peers/*.py "$run/payload/peers/"
install -m 0755 scripts/vm/checks.sh "$run/payload/checks.sh"
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$run/payload/pylib"
echo 1 > "$run/payload/stage"
[ -n "${VM_ONLY:-}" ] && echo "$VM_ONLY" > "$run/payload/only"
# The model and its ciphertext are made here with the package's own `caid encrypt` (scrypt under software
# emulation takes long): a small model (random weights, a config, a tokenizer), the bucket the test OSS serves,
# and the password the test KBS hands out.
dpkg-deb -x "$deb" "$run/pkg"
mkdir -p "$run/payload/model/plain" "$run/payload/model/bucket"
head -c $((3 << 20)) /dev/urandom > "$run/payload/model/plain/model.safetensors"
printf '{"architectures": ["DemoForCausalLM"], "hidden_size": 64, "vocab_size": 256}\n' > "$run/payload/model/plain/config.json"
printf '{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}\n' > "$run/payload/model/plain/tokenizer.json"
head -c 24 /dev/urandom | base64 > "$run/payload/model/password"
"$run/pkg/usr/bin/caid" encrypt --plain "$run/payload/model/plain" --cipher "$run/payload/model/bucket/qwen" \
    --passfile "$run/payload/model/password" > "$run/encrypt.log" 2>&1 || { cat "$run/encrypt.log" >&2; exit 1; }
mkfs.ext4 -q -F -L vmtest -d "$run/payload" "$run/payload.img" 256M >/dev/null
qemu-img create -q -f qcow2 -b "$image/rootfs.img" -F raw "$run/root.qcow2"

# /dev/kvm may exist and still not run a stock kernel (a paravirtual KVM hangs it): boot the guest kernel with no
# root disk, which panics within a second or two when KVM works; no panic message in 20 s means software emulation.
if [ "$accel" = auto ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        t0=$(date +%s)
        # (A subshell, so that qemu aborting, as it does on some hosts' KVM with -cpu host, prints nothing.)
        ( timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -no-user-config -display none -no-reboot \
            -serial "file:$run/kvm-probe.log" -kernel "$image/vmlinuz" -append "console=ttyS0 panic=-1" || true ) >/dev/null 2>&1
        grep -q "Kernel panic" "$run/kvm-probe.log" 2>/dev/null && accel=kvm
        echo "== KVM probe: $accel ($(( $(date +%s) - t0 )) s)"
    fi
fi
if [ "$accel" = kvm ]; then cpu=(-accel kvm -cpu host); else cpu=(-accel tcg,thread=multi -cpu max); fi

echo "== booting the guest ($accel; at most $timeout_s s; serial log $run/serial.log)"
t_boot=$(date +%s)
: > "$run/serial.log"
qemu-system-x86_64 "${cpu[@]}" -machine q35 -smp 2 -m 2048 -nodefaults -no-user-config -display none \
    -serial "file:$run/serial.log" -nic none -device virtio-rng-pci \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 loglevel=4 panic=-1 net.ifnames=0 systemd.show_status=error mitigations=off" \
    -drive "file=$run/root.qcow2,if=virtio,format=qcow2,discard=unmap" \
    -drive "file=$run/payload.img,if=virtio,format=raw" &
qemu_pid=$!
# Progress: the checks' own lines from the serial console.
tail -n +1 -F "$run/serial.log" 2>/dev/null | grep --line-buffered "vmtest: " | sed -u 's/^.*vmtest: /   /' &
tail_pid=$!
timed_out=0
deadline=$(( t_boot + timeout_s ))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge $deadline ]; then timed_out=1; kill "$qemu_pid"; break; fi
    sleep 1
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=""
t_qemu=$(( $(date +%s) - t_boot ))
sleep 0.5; kill "$tail_pid" 2>/dev/null || true; tail_pid=""

# Results and the guest's caid journal, read from the payload disk without mounting it.
last=$cache/last
rm -rf "$last"; mkdir -p "$last"
cp "$run/serial.log" "$last/"
debugfs -R "cat /results.txt" "$run/payload.img" > "$last/results.txt" 2>/dev/null || true
for f in journal-caid-stage1.json journal-caid-stage2.json; do
    debugfs -R "dump /$f $last/$f" "$run/payload.img" >/dev/null 2>&1 || true
done

echo
echo "== results ($last/results.txt)"
passed=$(grep -c '^PASS ' "$last/results.txt" || true)
failed=$(grep -c '^FAIL ' "$last/results.txt" || true)
grep -E '^(PASS|FAIL) ' "$last/results.txt" | cut -c1-300 || true
echo "-- timings (s):"
grep '^TIME ' "$last/results.txt" | sed 's/^TIME /   /' || true
if [ $timed_out = 1 ]; then echo "FAIL vm-timeout: the guest was still running after $timeout_s s"; failed=$((failed + 1)); fi
if ! grep -q '^END' "$last/results.txt"; then
    echo "FAIL vm-incomplete: the checks did not finish (see $last/serial.log)"; failed=$((failed + 1))
    tail -20 "$last/serial.log" | sed 's/^/   serial: /'
fi
echo "   image build $t_image, qemu (boot, checks, reboot, poweroff) $t_qemu, whole script $(( $(date +%s) - t_begin )) ($accel)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

#!/usr/bin/env bash
# The caid demo: from cai.env to a decrypted model behind an attested gateway, on any Debian 12 machine, in a few
# minutes. Run as root (it mounts with FUSE): scripts/demo.sh
#
# It installs what it needs, builds caid, encrypts a small sample model with `caid encrypt`, starts the test KBS/AS
# and the test OSS server from the tests on loopback with that ciphertext and its password, starts a stand-in for
# the inference service that serves files from the mount, runs `caid run` with the SAMPLE attester, waits until it
# is ready, shows `caid health`, and sends a request through `caid tunnel`. Everything is removed at the end.
#
# This is not a TEE: the sample attester proves nothing, and the KBS, AS and OSS are test servers. On a gn8v-tee host
# caid uses TDX (CAID_ATTESTER=auto) and your Trustee and bucket.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "demo: run as root (the model is mounted with FUSE): sudo scripts/demo.sh" >&2; exit 1; }

step "1/8 installing what the demo needs (Debian packages, PyPI packages of the test servers)"
scripts/install-deps.sh
step "2/8 building caid (the first build takes a few minutes)"
swift build --product caid
caid="$root/.build/debug/caid"

work=$(mktemp -d /tmp/caid-demo-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount -l "$work/mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
wait_for_file() { for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "demo: $1 did not appear" >&2; exit 1; }

step "3/8 making a sample model (a real safetensors file, a config and a tokenizer) and encrypting it with caid encrypt"
mkdir -p "$work/model" "$work/bucket" "$work/mnt"
python3 - "$work/model" <<'PY'
import json, sys, numpy as np
from safetensors.numpy import save_file
root = sys.argv[1]
rng = np.random.default_rng(7)
save_file({"embed.weight": rng.standard_normal((256, 64)).astype(np.float32)}, root + "/model.safetensors")
json.dump({"architectures": ["DemoForCausalLM"], "hidden_size": 64, "vocab_size": 256}, open(root + "/config.json", "w"), indent=2)
json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}, open(root + "/tokenizer.json", "w"))
PY
head -c 24 /dev/urandom | base64 > "$work/password"
"$caid" encrypt --plain "$work/model" --cipher "$work/bucket/qwen" --passfile "$work/password"
ls -l "$work/bucket/qwen"

step "4/8 starting the test servers on loopback: OSS (the ciphertext), KBS + Attestation Service (the password)"
python3 Tests/peers/oss_server.py --root "$work/bucket" --bucket models --ak LTAIdemo --sk demo-secret --region cn-demo --port-file "$work/oss.port" >/dev/null &
pids+=($!)
python3 Tests/peers/trustee_server.py --dialect current --prefix /trustee/ \
    --resource "default/aliyun/model-decryption-key=$work/password" --port-file "$work/kbs.port" &
pids+=($!)
python3 Tests/peers/static_server.py --root "$work/mnt" --port-file "$work/service.port" &
pids+=($!)
wait_for_file "$work/oss.port"; wait_for_file "$work/kbs.port"; wait_for_file "$work/service.port"
gateway_port=$((21000 + RANDOM % 5000))  # below the ephemeral port range
cat > "$work/cai.env" <<ENV
TRUSTEE_URL="http://127.0.0.1:$(cat "$work/kbs.port")/trustee/"
TRUSTEE_POLICY="default"
MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
MODEL_ENCRYPTION_METHOD="gocryptfs"
MODEL_OSS_BUCKET_PATH="models:/qwen"
MODEL_OSS_ENDPOINT="http://127.0.0.1:$(cat "$work/oss.port")"
MODEL_OSS_ACCESS_KEY_ID="LTAIdemo"
MODEL_OSS_SECRET_ACCESS_KEY="demo-secret"
MODEL_OSS_SESSION_TOKEN=
MODEL_SERVICE_PORT=$(cat "$work/service.port")
MODEL_MOUNT_POINT=$work/mnt
CAID_HEALTH_SOCKET=$work/caid.sock
CAID_CACHE_DIR=$work/cache
CAID_OSS_REGION=cn-demo
# The demo has no TEE: sample evidence, accepted by the test Attestation Service only.
CAID_ATTESTER=sample
CAID_GATEWAY_MODE=mapping
CAID_GATEWAY_PORT=$gateway_port
ENV
chmod 600 "$work/cai.env"
cat "$work/cai.env"

step "5/8 starting caid run (sample attester: NOT a TEE)"
"$caid" run --env "$work/cai.env" 2>"$work/caid.log" &
pids+=($!)
for i in $(seq 1 240); do
    if "$caid" health --socket "$work/caid.sock" >/dev/null 2>&1; then break; fi
    if "$caid" health --socket "$work/caid.sock" 2>/dev/null | grep -q "not retried"; then
        "$caid" health --socket "$work/caid.sock" >&2 || true
        echo "demo: a service failed for good; see its last error above" >&2; exit 1
    fi
    if [ $((i % 10)) = 0 ]; then "$caid" health --socket "$work/caid.sock" 2>/dev/null | sed 's/^/   /' || true; fi
    [ "$i" = 240 ] && { echo "demo: caid did not get ready; its log:" >&2; cat "$work/caid.log" >&2; exit 1; }
    sleep 0.5
done

step "6/8 caid health"
"$caid" health --socket "$work/caid.sock"
echo; echo "the decrypted model at $work/mnt:"; ls -l "$work/mnt"

step "7/8 a client request through caid tunnel (verified against the Attestation Service)"
tunnel_port=$((26000 + RANDOM % 5000))
"$caid" tunnel --listen "127.0.0.1:$tunnel_port" --as-addr "http://127.0.0.1:$(cat "$work/kbs.port")/trustee/as/" &
pids+=($!)
for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$tunnel_port" >/dev/null 2>&1 && break; sleep 0.1; done
echo "curl -x http://127.0.0.1:$tunnel_port http://127.0.0.1:$gateway_port/config.json"
response=$(curl -sS --max-time 30 -x "http://127.0.0.1:$tunnel_port" "http://127.0.0.1:$gateway_port/config.json")
echo "$response"
echo "$response" | grep -q DemoForCausalLM || { echo "demo: the response did not come back through the tunnel" >&2; exit 1; }

step "8/8 stopping caid"
kill -TERM "${pids[3]}"
wait "${pids[3]}" 2>/dev/null || true
if mountpoint -q "$work/mnt"; then echo "demo: the model is still mounted after stop" >&2; exit 1; fi

printf '\n\033[1;32mDEMO OK\033[0m: caid fetched the encrypted model from OSS, got its key from the KBS after attesting, mounted it\n'
printf 'decrypted, and served it through an attested tunnel. This used the SAMPLE attester and test servers, not a TEE.\n'

#!/usr/bin/env bash
# Benchmark: download a 1 GiB object and a 200-file tree from a fast static server on loopback (nginx, with the
# x-oss-hash-crc64ecma header and a ListObjectsV2 answer prepared for it) with `caid fetch` (verification on), with
# `aria2c -x 16`, and with the official SDK's downloader. Appends MB/s and ratios to docs/benchmarks.md.
# Needs: nginx-light, aria2, python3 with alibabacloud-oss-v2, a release build (swift build -c release --product caid).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx aria2c bc python3; do command -v $tool >/dev/null || { echo "needs $tool (apt-get install nginx-light aria2 bc)" >&2; exit 1; }; done
caid=$(realpath "${CAID:-.build/release/caid}")
size_mib=${SIZE_MIB:-1024}
port=${PORT:-18080}
work=$(mktemp -d /tmp/caid-bench-fetch.XXXXXX)
cleanup() {
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

bucket="$work/www/models"
mkdir -p "$bucket/big" "$bucket/tree/sub" "$work/logs"
head -c $((size_mib << 20)) /dev/urandom > "$bucket/big/model.bin"
for i in $(seq 1 200); do head -c $((RANDOM * 8 + 1000)) /dev/urandom > "$bucket/tree/sub/file-$i.bin"; done

# Per object: CRC-64 (the SDK's), nginx's own ETag ("<mtime hex>-<size hex>", which it honours in If-Match),
# one nginx location adding the CRC header, and the ListObjectsV2 answers for both prefixes.
python3 - "$bucket" "$work" <<'PY'
import os, sys
from urllib.parse import quote
from alibabacloud_oss_v2.crc import Crc64
bucket, work = sys.argv[1], sys.argv[2]
locations, listings = [], {"big": [], "tree": []}
for prefix in listings:
    for dirpath, _, files in os.walk(os.path.join(bucket, prefix)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, bucket)
            st = os.stat(path)
            crc = Crc64(0)
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    crc.update(chunk)
            etag = '"%x-%x"' % (int(st.st_mtime), st.st_size)
            locations.append('location = /models/%s { add_header x-oss-hash-crc64ecma %d; }' % (key, crc.sum64()))
            listings[prefix].append("<Contents><Key>%s</Key><ETag>%s</ETag><Size>%d</Size></Contents>" % (quote(key, safe=""), etag.replace('"', "&quot;"), st.st_size))
with open(os.path.join(work, "objects.conf"), "w") as f:
    f.write("\n".join(locations) + "\n")
for prefix, items in listings.items():
    with open(os.path.join(work, "list-%s.xml" % prefix), "w") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>models</Name><EncodingType>url</EncodingType>'
                "<IsTruncated>false</IsTruncated>%s</ListBucketResult>\n" % "".join(items))
PY

cat > "$work/nginx.conf" <<CONF
user root;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path $work/logs;
    proxy_temp_path $work/logs;
    fastcgi_temp_path $work/logs;
    uwsgi_temp_path $work/logs;
    scgi_temp_path $work/logs;
    server {
        listen 127.0.0.1:$port;
        root $work/www;
        location = /models/ {
            if (\$arg_prefix ~ "^big") { rewrite ^ /list-big.xml last; }
            rewrite ^ /list-tree.xml last;
        }
        location ~ ^/list-(big|tree)\.xml$ { root $work; internal; default_type application/xml; }
        include $work/objects.conf;
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work"
sleep 0.5

env_file() {
    cat > "$work/$1.env" <<ENV
TRUSTEE_URL="http://127.0.0.1:1/"
MODEL_KEY_ID="kbs:///default/bench/key"
MODEL_OSS_BUCKET_PATH="models:/$1"
MODEL_OSS_ENDPOINT="http://127.0.0.1:$port"
MODEL_OSS_ACCESS_KEY_ID="bench"
MODEL_OSS_SECRET_ACCESS_KEY="bench-secret"
CAID_CACHE_DIR=$work/cache-$1
CAID_OSS_REGION=cn-bench
ENV
    chmod 600 "$work/$1.env"
}
env_file big
env_file tree

now() { date +%s.%N; }
rate() { echo "scale=0; $1 / 1000000 / $2" | bc; }
big_bytes=$(stat -c %s "$bucket/big/model.bin")
tree_bytes=$(du -sb "$bucket/tree" | cut -f1)
urls="$work/tree-urls.txt"
find "$bucket/tree" -type f | sed "s|$work/www|http://127.0.0.1:$port|" > "$urls"
cat "$bucket"/big/* "$bucket"/tree/sub/* > /dev/null  # the server reads from the page cache in every run

measure() {  # name, bytes, command...
    local name=$1 bytes=$2; shift 2
    rm -rf "$work"/cache-* "$work/aria" "$work/sdk"; mkdir -p "$work/aria" "$work/sdk"; sync
    local start end
    start=$(now); "$@" > "$work/out.log" 2>&1 || { echo "$name failed:" >&2; tail -5 "$work/out.log" >&2; exit 1; }; end=$(now)
    rate "$bytes" "$(echo "$end - $start" | bc)"
}

sdk_download() {  # key, destination
    python3 - "$port" "$1" "$2" <<'PY'
import sys, alibabacloud_oss_v2 as oss
port, key, dest = sys.argv[1:]
cfg = oss.config.load_default()
cfg.credentials_provider = oss.credentials.StaticCredentialsProvider("bench", "bench-secret")
cfg.region = "cn-bench"
cfg.endpoint = "http://127.0.0.1:%s" % port
cfg.use_path_style = True
client = oss.Client(cfg)
d = client.downloader(part_size=8 << 20, parallel_num=16)
d.download_file(oss.GetObjectRequest(bucket="models", key=key), dest)
PY
}
caid_big=$(measure caid "$big_bytes" "$caid" fetch --env "$work/big.env")
aria_big=$(measure aria2c "$big_bytes" aria2c -q -x 16 -s 16 -k 8M --file-allocation=none -d "$work/aria" "http://127.0.0.1:$port/models/big/model.bin")
sdk_big=$(measure sdk "$big_bytes" sdk_download big/model.bin "$work/sdk/model.bin")
caid_tree=$(measure caid "$tree_bytes" "$caid" fetch --env "$work/tree.env")
aria_tree=$(measure aria2c "$tree_bytes" aria2c -q -j 16 -x 4 --file-allocation=none -d "$work/aria" -i "$urls")

echo "1 GiB object: caid $caid_big MB/s, aria2c $aria_big MB/s, SDK $sdk_big MB/s"
echo "200-file tree: caid $caid_tree MB/s, aria2c $aria_tree MB/s"
{
    echo
    echo "### OSS download throughput, $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r))"
    echo
    echo "Command: \`scripts/bench-fetch.sh\` (SIZE_MIB=$size_mib). nginx on loopback serves the objects from the page"
    echo "cache with their \`x-oss-hash-crc64ecma\` and a prepared ListObjectsV2 answer. caid: \`caid fetch\` (8 MiB parts,"
    echo "8 in flight, CRC-64 verification and fsync on); aria2c: \`-x 16 -s 16 -k 8M\` (one object) and \`-j 16 -x 4\`"
    echo "(tree), no verification; SDK: alibabacloud-oss-v2 \`downloader(part_size=8 MiB, parallel_num=16)\`."
    echo
    echo "| data | caid MB/s | aria2c MB/s | SDK MB/s | caid / aria2c |"
    echo "|---|---|---|---|---|"
    echo "| 1 object, $((big_bytes >> 20)) MiB | $caid_big | $aria_big | $sdk_big | $(echo "scale=2; $caid_big / $aria_big" | bc)x |"
    echo "| 200 files, $((tree_bytes >> 20)) MiB | $caid_tree | $aria_tree | – | $(echo "scale=2; $caid_tree / $aria_tree" | bc)x |"
} >> docs/benchmarks.md

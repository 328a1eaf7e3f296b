#!/usr/bin/env bash
# Installs what building caid, its tests and the demo need on a Debian 12 machine (as root): the C libraries caid
# links, FUSE, gocryptfs (the reference the tests compare with), iptables and iproute2 (the gateway's nat rules and
# the namespace tests), a C compiler (the fake NVML library), curl, nginx and ApacheBench (the tunnel's load tests
# and scripts/bench-tunnel.sh), stunnel4 and perf (the tunnel benchmark), binutils and rpm (scripts/package.sh:
# objdump, rpmbuild), and the PyPI packages of the test peers.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in pkg-config libsystemd-dev libfuse3-dev fuse3 libfuse2 gocryptfs systemd gcc binutils iptables iproute2 curl openssl nginx-light apache2-utils stunnel4 linux-perf rpm; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
echo "== installing PyPI packages for the test peers"
python3 -m pip install -q --disable-pip-version-check -r Tests/requirements.txt

#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian 12 machine (as root), builds caid and runs
# every test. Usage: scripts/test.sh [extra `swift test` arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in pkg-config libsystemd-dev libfuse3-dev fuse3 libfuse2 gocryptfs systemd gcc iptables iproute2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ -s Tests/requirements.txt ]; then
    echo "== installing PyPI packages for the test peers"
    python3 -m pip install -q --disable-pip-version-check -r Tests/requirements.txt
fi

echo "== building"
swift build --build-tests
echo "== testing"
# Suites one at a time: the FUSE and encryption suites keep both cores busy, and the timing-sensitive supervisor
# and watchdog tests must not share them.
swift test --skip-build --no-parallel "$@"

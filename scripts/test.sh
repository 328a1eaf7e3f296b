#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian 12 machine (as root), builds caid and runs
# every test. Usage: scripts/test.sh [extra `swift test` arguments, which run those tests in one lane]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== building"
swift build --build-tests
echo "== testing"
if [ $# -gt 0 ]; then
    exec swift test --skip-build --no-parallel "$@"
fi

# Two lanes, each running its suites one at a time. Most of a run waits on peers, timeouts and mounts (about 290
# CPU-seconds in 385 s on 2 cores), so two lanes nearly halve it. Lane A holds what runs caid end to end and what
# mounts (CaidCLITests, CacheFSTests, GocryptfsTests, SharingTests); lane B the rest. The split by target keeps each
# lane at about half of the serial time (README.md, "Run the tests"). No suite shares state with another:
# namespaces, directories and mounts are each test's own, ports come from a range per lane (below), and iptables
# rules are made only inside a test's namespaces.
#
# The lanes call the test bundle itself: two `swift test` processes would queue on the lock of .build.
bundle=.build/debug/caidPackageTests.xctest
lane_a=(--filter 'CaidCLITests\.' --filter 'CacheFSTests\.' --filter 'GocryptfsTests\.' --filter 'SharingTests\.')
lane_b=(--skip 'CaidCLITests\.' --skip 'CacheFSTests\.' --skip 'GocryptfsTests\.' --skip 'SharingTests\.')
logs=$(mktemp -d /tmp/caid-test-lanes.XXXXXX)
trap 'rm -rf "$logs"' EXIT

started=$(date +%s)
CAID_TEST_PORTS=20000-25999 "$bundle" --testing-library swift-testing --no-parallel "${lane_a[@]}" > "$logs/a" 2>&1 & pid_a=$!
CAID_TEST_PORTS=26000-32000 "$bundle" --testing-library swift-testing --no-parallel "${lane_b[@]}" > "$logs/b" 2>&1 & pid_b=$!
# Commands started with & ignore SIGINT: on an interrupt or a CI cancel, stop the lanes rather than leave them running.
trap 'kill -TERM $pid_a $pid_b 2>/dev/null; wait; exit 130' INT TERM
status=0
for lane in a b; do
    pid_var=pid_$lane
    if wait "${!pid_var}"; then result=passed; else result=failed; status=1; fi
    echo "== lane $lane $result ($(( $(date +%s) - started )) s since the start)"
    cat "$logs/$lane"
done
# Each lane's summary again at the end, where a reader of a long CI log looks first.
for lane in a b; do
    echo "== lane $lane: $(grep -E 'Test run with' "$logs/$lane" | tail -1 || echo 'no summary: the lane did not finish')"
done
exit $status

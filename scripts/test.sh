#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian 12 machine (as root), builds caid and runs
# every test. Usage: scripts/test.sh [extra `swift test` arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== building"
swift build --build-tests
echo "== testing"
# Suites one at a time: the FUSE and encryption suites keep both cores busy, and the timing-sensitive supervisor
# and watchdog tests must not share them.
swift test --skip-build --no-parallel "$@"

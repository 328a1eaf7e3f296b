#!/usr/bin/env bash
# Coverage-guided fuzzing of caid's parsers of untrusted bytes with libFuzzer, through the Swift toolchain.
#
#   scripts/fuzz.sh [--runs N] [--out DIR] [--no-build] [target...]    default: every target, 1,000,000 runs each
#
# Builds caid-fuzz with -sanitize=fuzzer,address in its own build path (.build-fuzz, holding the build lock only
# while building), then runs each target one after the other, niced, on a scratch copy of its committed seeds
# (Fuzz/corpus/<target>). Crash inputs land in <out>/<target>/crashes/; reproduce one with
#   CAID_FUZZ_TARGET=<target> .build-fuzz/release/caid-fuzz <file>
# or, without the sanitizer build, `swift run caid-fuzz replay <target> <file>`. A crash that is fixed gets its
# input added to Fuzz/corpus/<target>/ so the smoke test (CaidFuzzTargetsTests) replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=1000000
build=1
out=".build-fuzz/runs/$(date -u +%Y%m%dT%H%M%SZ)"
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

if [ $build = 1 ]; then
    echo "== building caid-fuzz (release, -sanitize=fuzzer,address)"
    # Linked with lld: gold stops with an internal error (dwarf_reader.cc format_file_lineno) on this link. The
    # toolset names the toolchain's own ld.lld; keep its path stable, a changed toolset rebuilds everything.
    mkdir -p .build-fuzz
    printf '{ "schemaVersion": "1.0", "linker": { "path": "%s" } }\n' \
        "$(dirname "$(readlink -f "$(command -v swift)")")/ld.lld" > .build-fuzz/toolset.json
    # The asan runtime's symbol list makes the linker warn once per local symbol; the warnings say nothing.
    flock /tmp/swift-build.lock swift build -c release --build-path .build-fuzz --product caid-fuzz --toolset .build-fuzz/toolset.json \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -DCAID_FUZZ 2>&1 | { grep -v -e "Cannot export local symbol" -e "found 1 file(s) which are unhandled" -e "CMakeLists.txt" || true; }
fi
bin=.build-fuzz/release/caid-fuzz
[ -x "$bin" ] || { echo "fuzz.sh: the build failed" >&2; exit 1; }

# The targets and their -max_len, from the binary itself.
declare -A max_len
while read -r name length; do max_len[$name]=$length; done < <(CAID_FUZZ_LIST=1 "$bin")
[ ${#targets[@]} -gt 0 ] || targets=($(CAID_FUZZ_LIST=1 "$bin" | cut -d' ' -f1))

mkdir -p "$out"
summary="$out/summary.txt"
printf '%-16s %10s %8s %8s %8s %8s  %s\n' target runs seconds cov ft corpus result | tee "$summary"
failed=0
for target in "${targets[@]}"; do
    [ -n "${max_len[$target]:-}" ] || { echo "fuzz.sh: no target '$target'" >&2; exit 2; }
    dir="$out/$target"
    mkdir -p "$dir/corpus" "$dir/crashes"
    cp Fuzz/corpus/"$target"/* "$dir/corpus/" 2>/dev/null || true
    start=$(date +%s)
    set +e
    # The Swift runtime's backtracer would wait on a crash; libFuzzer reports it itself.
    # Known leaks in dependencies are suppressed, each with its reason (Fuzz/lsan-suppressions.txt).
    SWIFT_BACKTRACE=enable=no LSAN_OPTIONS="suppressions=$PWD/Fuzz/lsan-suppressions.txt" CAID_FUZZ_TARGET="$target" nice -n 10 "$bin" "$dir/corpus" \
        -runs="$runs" -max_len="${max_len[$target]}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$dir/crashes/" -print_final_stats=1 >"$dir/log" 2>&1
    code=$?
    set -e
    seconds=$(( $(date +%s) - start ))
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$dir/log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    if [ "$code" -eq 0 ]; then result="ok"; else result="FAILED (exit $code, see $dir/log, inputs in $dir/crashes)"; failed=1; fi
    printf '%-16s %10s %8s %8s %8s %8s  %s\n' "$target" "${executed:-?}" "$seconds" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result" | tee -a "$summary"
done
echo "summary: $summary"
exit $failed

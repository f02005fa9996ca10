#!/usr/bin/env bash
# Runs every cargo-fuzz target of tokenloom-core for SECONDS seconds each, one after the other.
#
#   fuzz/run_all.sh [SECONDS] [extra libFuzzer flags...]      (default: 60 s per target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). With a nightly toolchain installed the targets
# run under AddressSanitizer; on stable alone they are built with RUSTC_BOOTSTRAP=1 and
# `--sanitizer none` (Rust's own checks: bounds, overflow, panics). Crashes land in
# fuzz/artifacts/<target>/, the growing corpus in fuzz/corpus/<target>/; reproduce one with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`. Set FUZZ_TARGETS to run
# a subset, e.g. FUZZ_TARGETS="covers verify" fuzz/run_all.sh 600.
set -euo pipefail
secs="${1:-60}"
shift || true
cd "$(dirname "$0")"

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    san=()
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    san=(--sanitizer none)
fi
targets="${FUZZ_TARGETS:-$("${fuzz[@]}" list)}"
failed=()
for t in $targets; do
    echo "=== $t: ${secs}s"
    if ! "${fuzz[@]}" run "${san[@]}" -O "$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 "$@"; then
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (see fuzz/artifacts/)"
    exit 1
fi
echo "all targets ran ${secs}s without a finding"

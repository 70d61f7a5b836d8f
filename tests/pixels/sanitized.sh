#!/bin/bash
# The pixel path under ASan+UBSan (clang), and a bounded libFuzzer run:
#   1. configure (once) a separate build dir with clang, -Db_sanitize=address,undefined and
#      -Dfuzzing_engine=libfuzzer; build only xregctl and the fuzz target;
#   2. run the corpus table (corpus.py) and the generated fixtures (test_fixtures.py) through
#      that xregctl: any sanitizer report or leak is a failure (exit codes 86/87/23 are
#      counted as crashes by corpus.py and fail the fixture tests);
#   3. fuzz dicom_image_read_buffer for FUZZ_SECONDS (default 60) from the committed corpus.
#
#   tests/pixels/sanitized.sh [BUILD_DIR]      (default: build/san)
# A longer run: FUZZ_SECONDS=3600 tests/pixels/sanitized.sh (see README "Fuzzing").
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
bd=${1:-$src/build/san}
py=/usr/bin/python3
for tool in clang clang++; do
    command -v $tool >/dev/null || { echo "sanitized: $tool is missing (Debian clang)"; exit 1; }
done
if [ ! -f "$bd/build.ninja" ]; then
    CC=clang CXX=clang++ meson setup "$bd" "$src" -Db_sanitize=address,undefined \
        -Db_lundef=false -Dfuzzing_engine=libfuzzer >"$bd.setup.log" 2>&1 ||
        { cat "$bd.setup.log"; exit 1; }
fi
ninja -C "$bd" daemon/xregctl tests/fuzz/fuzz-dicom-pixels >/dev/null
for exe in daemon/xregctl tests/fuzz/fuzz-dicom-pixels; do
    [ -x "$bd/$exe" ] || { echo "sanitized: $bd/$exe was not built"; exit 1; }
done

export ASAN_OPTIONS=detect_leaks=1:exitcode=86:strict_string_checks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=87
export LSAN_OPTIONS=exitcode=23
export XREGCTL=$bd/daemon/xregctl

echo "== corpus under ASan+UBSan"
$py "$src/tests/pixels/corpus.py" | tail -n 3
echo "== fixtures under ASan+UBSan"
$py -m pytest -q -p no:cacheprovider "$src/tests/pixels/test_fixtures.py" \
    "$src/tests/pixels/test_errors.py" | tail -n 3

echo "== libFuzzer, ${FUZZ_SECONDS:-60} s"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus"
# New inputs go to the scratch dir; the committed corpus is only read. Crashes land in $work
# and are printed; minimize one with -minimize_crash=1 and commit it to the corpus.
if ! "$bd/tests/fuzz/fuzz-dicom-pixels" -max_total_time="${FUZZ_SECONDS:-60}" \
        -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 -artifact_prefix="$work/" \
        "$work/corpus" "$src/tests/fuzz/corpus/dicom-pixels" >"$work/fuzz.log" 2>&1; then
    tail -n 60 "$work/fuzz.log"
    ls -la "$work"
    exit 1
fi
grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|Done [0-9]+ runs" "$work/fuzz.log" || true
echo "sanitized: ok"

#!/bin/bash
# Bounded fuzz run of nn/'s image path (meson test nn-image-fuzz): compiles nn-image.c,
# nn-preproc.c and common/ with clang, libFuzzer, ASan and UBSan into a scratch directory (a few
# seconds: no separate meson build), replays the committed corpus tests/fuzz/corpus/nn-image/,
# then fuzzes for FUZZ_SECONDS (default 30). A crash leaves its input in the printed directory:
# minimize it (fuzz-nn-image -minimize_crash=1 CRASH) and commit it to the corpus.
#   bash tests/unit/nn/fuzz-nn-image.sh SOURCE_ROOT BUILD_DIR
set -euo pipefail
src=$1
build=$2
clang=$(command -v clang-14 || command -v clang || true)
if [ -z "$clang" ]; then
    echo "clang not found (Debian clang-14 + libclang-rt-14-dev)" >&2
    [ "${CI:-}" = true ] && exit 1
    exit 77
fi
work=$(mktemp -d /tmp/nn-image-fuzz.XXXXXX)
flags=(-g -O1 -std=c17 -D_GNU_SOURCE -ffp-contract=off -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -I"$src/nn" -I"$src/common" -I"$build"
       $(pkg-config --cflags libpng))
"$clang" "${flags[@]}" -o "$work/fuzz-nn-image" "$src/tests/fuzz/fuzz-nn-image.c" \
    "$src/nn/nn-image.c" "$src/nn/nn-preproc.c" "$src/common/xr-error.c" "$src/common/xr-fs.c" \
    $(pkg-config --libs libpng libjpeg) -lm -lpthread
mkdir "$work/corpus"
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1
if ! "$work/fuzz-nn-image" -max_total_time="${FUZZ_SECONDS:-30}" -rss_limit_mb=1024 \
        -artifact_prefix="$work/" -print_final_stats=1 \
        "$work/corpus" "$src/tests/fuzz/corpus/nn-image" >"$work/fuzz.log" 2>&1; then
    tail -n 60 "$work/fuzz.log"
    echo "FAILED: fuzz-nn-image found a crash; inputs in $work" >&2
    exit 1
fi
grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|Done [0-9]+ runs" "$work/fuzz.log" || true
echo "fuzz-nn-image: no crash, $(ls "$work/corpus" | wc -l) new corpus entries (in $work/corpus)"
rm -rf "$work"

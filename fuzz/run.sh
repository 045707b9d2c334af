#!/usr/bin/env bash
# Run one fuzz harness against the instrumented build (fuzz/README.md).
#
#   fuzz/run.sh TARGET [SECONDS] [libFuzzer args...]   fuzz for SECONDS (default 60)
#   fuzz/run.sh TARGET FILE...                          replay inputs (a crash, a corpus file)
#   fuzz/run.sh TARGET --replay-corpus                  every corpus input once, leak-checked
#
# TARGET is a harness in fuzz/ (http_request, http_chunked, http_split,
# http_h11_diff, ws_frames, ws_utf8, ws_inflate, wsgi_environ). The extension is built with YIMMO_FUZZ=1 (clang,
# -fsanitize=fuzzer-no-link,address,undefined) into build/fuzz/pkg, never in
# place. As atheris documents for native extensions, libFuzzer and the ASan
# runtime are preloaded as one library (atheris's asan_with_fuzzer.so when it
# was built from source, else the same merge made here from clang's
# compiler-rt), so the C code's coverage counters reach libFuzzer.
# PYTHONMALLOC=malloc puts every PyMem block in front of ASan and LeakSanitizer
# (pymalloc's arenas would hide a small overflow).
#
# New corpus entries go to build/fuzz/corpus/TARGET (the committed seeds in
# fuzz/corpus/TARGET are only read); crashes to build/fuzz/artifacts/TARGET/.
# Exit status is libFuzzer's: non-zero on a crash, sanitizer report, leak or
# timeout, with the reproducer printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${PY:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
OUT="${YIMMO_FUZZ_OUT:-$ROOT/build/fuzz}"
PKG="$OUT/pkg"

die() { printf 'fuzz/run.sh: %s\n' "$*" >&2; exit 2; }

target="${1:-}"
[ -n "$target" ] && [ -f "fuzz/$target.py" ] && [ "${target#_}" = "$target" ] \
    || die "usage: fuzz/run.sh TARGET [SECONDS | FILE...] [libFuzzer args]; targets: $(cd fuzz && ls http_*.py ws_*.py wsgi_*.py | sed 's/\.py$//' | tr '\n' ' ')"
shift

command -v clang >/dev/null || die "clang not found (apt-get install clang libclang-rt-14-dev)"
"$PY" -c 'import atheris' 2>/dev/null || die "atheris not installed ($PY -m pip install atheris)"
if [ "$target" = http_h11_diff ]; then
    "$PY" -c 'import h11' 2>/dev/null || die "h11 not installed ($PY -m pip install h11)"
fi

# The instrumented extension, rebuilt when a C source, header or setup.py is newer.
so="$(ls "$PKG"/yimmo/_yimmo*.so 2>/dev/null | head -n1 || true)"
if [ -z "$so" ] || [ -n "$(find csrc include setup.py -newer "$so" \( -name '*.[ch]' -o -name setup.py \) | head -n1)" ]; then
    echo "fuzz/run.sh: building the instrumented extension into $PKG" >&2
    rm -rf "$PKG" "$OUT/tmp"
    mkdir -p "$PKG"
    YIMMO_FUZZ=1 "$PY" setup.py -q build_ext -b "$PKG" -t "$OUT/tmp" >"$OUT/build.log" 2>&1 \
        || { cat "$OUT/build.log"; die "instrumented build failed"; }
fi
# Always the checkout's Python files beside it.
cp yimmo/*.py "$PKG/yimmo/"

# libFuzzer + ASan (with UBSan's handlers) in one preloadable library, merged
# the way atheris's setup.py makes its asan_with_fuzzer.so, but from the
# compiler-rt of the clang that built the extension, so that the two agree.
runtime="$OUT/asan_with_fuzzer.so"
if [ ! -f "$runtime" ]; then
    rt="$(clang -print-resource-dir)/lib/linux"
    arch="$(uname -m)"
    [ -f "$rt/libclang_rt.fuzzer_no_main-$arch.a" ] \
        || die "no $rt/libclang_rt.fuzzer_no_main-$arch.a (apt-get install libclang-rt-14-dev)"
    tmp="$(mktemp -d)"
    cp "$rt/libclang_rt.asan-$arch.a" "$tmp/asan.a"
    # The preinit object only works in an executable; atheris drops it too.
    ar d "$tmp/asan.a" asan_preinit.cc.o asan_preinit.cpp.o 2>/dev/null || true
    clang++ -shared -o "$runtime.tmp" -Wl,--whole-archive "$rt/libclang_rt.fuzzer_no_main-$arch.a" \
        "$tmp/asan.a" -Wl,--no-whole-archive -lpthread -ldl
    mv "$runtime.tmp" "$runtime"
    rm -rf "$tmp"
fi

work="$OUT/corpus/$target"
art="$OUT/artifacts/$target"
mkdir -p "$work" "$art"
args=()
if [ "${1:-}" = --replay-corpus ]; then
    # Every corpus input once, each checked for leaks (slow per input, so not
    # while fuzzing): what a fuzzing run found is leak-checked afterwards.
    shift
    args+=("$work" "fuzz/corpus/$target")
    [ -d "fuzz/regressions/$target" ] && args+=("fuzz/regressions/$target")
    args+=(-runs=0 -detect_leaks=1)
elif [ $# -gt 0 ] && [ -f "$1" ]; then
    # Replay mode: every leading argument that is a file, leak-checked.
    while [ $# -gt 0 ] && [ -f "$1" ]; do args+=("$1"); shift; done
    args+=(-runs=1 -detect_leaks=1)
else
    seconds=60
    case "${1:-}" in ''|-*) ;; *) seconds="$1"; shift ;; esac
    args+=("$work" "fuzz/corpus/$target")
    [ -d "fuzz/regressions/$target" ] && args+=("fuzz/regressions/$target")
    # libFuzzer's per-input leak check runs LeakSanitizer after every input
    # that allocated more than it freed, which the interpreter always does:
    # 200x slower. Leaks are checked by --replay-corpus instead.
    args+=(-max_total_time="$seconds" -print_final_stats=1 -detect_leaks=0)
fi
case "$target" in ws_*) dict=fuzz/ws.dict ;; *) dict=fuzz/http.dict ;; esac
args+=(-dict="$dict" -max_len=4096 -timeout=10 -rss_limit_mb=3072
       -artifact_prefix="$art/")

# Only the interpreter gets the runtimes: LeakSanitizer would fail every
# other program this script runs.
env=(LD_PRELOAD="$runtime${LD_PRELOAD:+ $LD_PRELOAD}"
     PYTHONPATH="$PKG" PYTHONMALLOC=malloc YIMMO_FUZZ_EXT_DIR="$PKG"
     ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:strict_string_checks=1:detect_stack_use_after_return=1}"
     UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}")

start="$(date +%s)"
rc=0
env "${env[@]}" "$PY" "fuzz/$target.py" "${args[@]}" "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
    newest="$(ls -t "$art" 2>/dev/null | head -n1 || true)"
    echo "fuzz/run.sh: $target failed (exit $rc) after $(( $(date +%s) - start )) s" >&2
    if [ -n "$newest" ] && [ "$(stat -c %Y "$art/$newest")" -ge "$start" ]; then
        echo "reproducer: $art/$newest" >&2
        "$PY" -c 'import sys; print("bytes: %r" % open(sys.argv[1], "rb").read())' "$art/$newest" >&2
        echo "replay: fuzz/run.sh $target $art/$newest" >&2
        echo "keep:   $PY fuzz/keep.py $target $art/$newest   (minimized into fuzz/regressions/$target/)" >&2
    fi
fi
exit "$rc"

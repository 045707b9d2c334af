#!/usr/bin/env bash
# Memory-safety runs of the test suite (docs/building.md):
#
#   scripts/memcheck.sh asan       the suite against an ASan+UBSan build
#   scripts/memcheck.sh valgrind   a representative subset under valgrind
#                                  memcheck: zero errors, zero definite leaks
#
# Both build into build/ (not the package directory), so the normal build the
# rest of the suite uses is left alone. Run from the project's virtualenv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-python}"
# The interpreter itself, not a wrapper script (pyenv's shims are bash):
# valgrind must run the real binary.
PY="$("$PY" -c 'import sys; print(sys.executable)')"
OUT="$ROOT/build/memcheck"

# A copy of the package with the given extension build beside it.
build_into() {  # DIR [ENV=VALUE...]
    local dir="$1"; shift
    rm -rf "$dir"
    mkdir -p "$dir/pkg"
    env "$@" "$PY" setup.py -q build_ext -b "$dir/pkg" -t "$dir/tmp" >"$dir/build.log" 2>&1 \
        || { cat "$dir/build.log"; exit 1; }
    if grep -q "warning:" "$dir/build.log"; then
        grep "warning:" "$dir/build.log"
        echo "memcheck: the build has warnings" >&2
        exit 1
    fi
    cp yimmo/*.py yimmo/*.pyi yimmo/py.typed "$dir/pkg/yimmo/"
}

# Tests that measure wall-clock timeouts in tenths of a second or spawn the
# CLI are left to the normal run: under valgrind everything is 20-50x slower.
VALGRIND_TESTS=(
    tests/test_parser.py
    tests/test_server_basic.py
    tests/test_server_body.py
    tests/test_server_errors.py
    tests/test_wsgi.py
    tests/test_hardening.py
    tests/test_tls.py
)

case "${1:-}" in
asan)
    build_into "$OUT/asan" YIMMO_DEBUG=1
    # Leak checking is valgrind's job: CPython keeps interned and cached
    # objects alive at exit by design, which LeakSanitizer reports.
    export YIMMO_SANITIZED=1 PYTHONPATH="$OUT/asan/pkg"
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
    # -P: not the checkout's own yimmo/ (the normal build) but the copy.
    LD_PRELOAD="$preload" "$PY" -P -c 'import sys, yimmo._yimmo as m
assert m.__file__.startswith(sys.argv[1]), m.__file__' "$OUT/asan/pkg"
    LD_PRELOAD="$preload" "$PY" -P -m pytest -q -p no:cacheprovider tests \
        --ignore=tests/test_cli.py --ignore=tests/test_arbiter.py "${@:2}"
    # The soak too: sanitizers see what random traffic does (the spare
    # buffer caches are off in this build; the normal build soaks them).
    for a in "--threads 4" "--native"; do
        # shellcheck disable=SC2086
        LD_PRELOAD="$preload" "$PY" -P scripts/soak.py --seconds "${YIMMO_SOAK_SECONDS:-15}" $a
    done
    ;;
valgrind)
    build_into "$OUT/valgrind" YIMMO_CFLAGS="-O1 -g"
    tests=()
    for t in "${VALGRIND_TESTS[@]}"; do [ -e "$t" ] && tests+=("$t"); done
    log="$OUT/valgrind/valgrind.log"
    # The interpreter has valgrind reports of its own (uninitialised-value
    # chains inside CPython, AVX2 string over-reads in glibc). The verdict
    # is ours: no error whose stack passes through yimmo's code, and no
    # definitely lost block allocated through it.
    rc=0
    YIMMO_SANITIZED=1 PYTHONPATH="$OUT/valgrind/pkg" PYTHONMALLOC=malloc \
        valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
        --suppressions="$ROOT/scripts/valgrind-python.supp" --num-callers=30 \
        --log-file="$log" \
        "$PY" -P -m pytest -q -p no:cacheprovider "${tests[@]}" "${@:2}" \
        -k "not timeout and not slow and not never_reads and not faster_than_reader and not busy_poll and not without_spinning and not does_not_spin" || rc=$?
    "$PY" - "$log" <<'PYEOF' || rc=$?
import re, sys
text = open(sys.argv[1]).read()
ours = re.compile(r"_yimmo|\bymo_|\bymo__|csrc/")
frame = re.compile(r"^==\d+==\s+(at|by) ")

def implicates_us(block):
    # The error is ours when one of the innermost frames is ours, or when
    # our code freed or allocated the memory it touched. An error deep in
    # the interpreter running the application that yimmo called is not.
    lines = block.splitlines()
    main, sub, in_sub = [], [], False
    for line in lines[1:]:
        if re.search(r"(free'd|alloc'd|was allocated|is on thread)", line):
            in_sub = True
        elif frame.match(line):
            (sub if in_sub else main).append(line)
    return any(ours.search(l) for l in main[:4]) or any(ours.search(l) for l in sub)

blocks = re.split(r"\n==\d+== \n", text)
bad = [b for b in blocks
       if re.search(r"Invalid (read|write|free)|uninitialised|Mismatched|overlap", b)
       and implicates_us(b)]
# Definitely lost blocks allocated by yimmo's code. Other extensions the
# tests import (cffi, cryptography's Rust bindings) leak a few bytes of
# their own at import time.
lost = 0
for b in blocks:
    m = re.search(r"([\d,]+) bytes in [\d,]+ blocks are definitely lost", b)
    if m and ours.search(b):
        lost += int(m.group(1).replace(",", ""))
print("valgrind: %d error reports in yimmo's code, %d bytes definitely lost" % (len(bad), lost))
for b in bad[:5]:
    print(b)
sys.exit(1 if bad or lost else 0)
PYEOF
    if [ "$rc" -ne 0 ]; then
        echo "memcheck: valgrind run failed (exit $rc); see $log" >&2
        exit "$rc"
    fi
    ;;
*)
    echo "usage: scripts/memcheck.sh asan|valgrind [pytest args]" >&2
    exit 2
    ;;
esac

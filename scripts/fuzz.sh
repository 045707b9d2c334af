#!/usr/bin/env bash
# Fuzzing on the instrumented build (fuzz/README.md).
#
#   scripts/fuzz.sh ci [SECONDS]     every harness (4 HTTP, 3 WebSocket, the
#                                    WSGI environ) for SECONDS (default 25),
#                                    then what it found replayed with leak
#                                    checks; fails on a crash, sanitizer
#                                    report, leak, timeout or broken invariant,
#                                    printing the reproducer. About 5.5
#                                    minutes in all (kept under 6).
#   scripts/fuzz.sh TARGET [ARGS]    same as fuzz/run.sh TARGET [ARGS]
#
# Needs clang and libclang-rt-14-dev (Debian 12), and atheris and h11 in the
# interpreter's environment (PY, default .venv/bin/python); installs the two
# Python packages when they are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${PY:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PY
TARGETS=(http_request http_chunked http_split http_h11_diff ws_frames ws_utf8 ws_inflate
         wsgi_environ)

"$PY" -c 'import atheris, h11' 2>/dev/null \
    || "$PY" -m pip -q --disable-pip-version-check install atheris h11

case "${1:-}" in
ci)
    seconds="${2:-25}"
    # A fresh corpus each run: CI starts from the committed seeds.
    export YIMMO_FUZZ_OUT="$ROOT/build/fuzz-ci"
    rm -rf "$YIMMO_FUZZ_OUT/corpus" "$YIMMO_FUZZ_OUT/artifacts"
    failed=()
    for t in "${TARGETS[@]}"; do
        log="$YIMMO_FUZZ_OUT/$t.log"
        mkdir -p "$YIMMO_FUZZ_OUT"
        echo "==> fuzz $t for ${seconds}s" >&2
        if ! fuzz/run.sh "$t" "$seconds" >"$log" 2>&1; then
            # The report: the sanitizer's or the Python traceback, and the reproducer.
            grep -v -E '^(#[0-9]|INFO:|	NEW_FUNC)' "$log" | tail -n 60 >&2
            failed+=("$t")
            continue
        fi
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec)|^#[0-9]+ +DONE' "$log" >&2 || true
        echo "==> $t: replaying its corpus with leak checks" >&2
        if ! fuzz/run.sh "$t" --replay-corpus >"$log.leaks" 2>&1; then
            grep -v -E '^(#[0-9]|INFO:|	NEW_FUNC)' "$log.leaks" | tail -n 60 >&2
            failed+=("$t (leak)")
        fi
    done
    if [ "${#failed[@]}" -ne 0 ]; then
        echo "scripts/fuzz.sh: FAILED: ${failed[*]} (logs in $YIMMO_FUZZ_OUT)" >&2
        exit 1
    fi
    echo "scripts/fuzz.sh: ${#TARGETS[@]} harnesses, ${seconds}s each: no crash, leak or broken invariant" >&2
    ;;
""|-h|--help)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    ;;
*)
    exec fuzz/run.sh "$@"
    ;;
esac

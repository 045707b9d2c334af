#!/usr/bin/env bash
# yimmo's developer entry point. Every subcommand first installs what a fresh
# Debian machine lacks (idempotent: a second run installs nothing).
#
#   ./scripts/dev.sh setup          system packages, .venv, pip install -e .[test]
#   ./scripts/dev.sh serve [ARGS]   setup, then yimmo-wsgi examples.app:app on
#                                   http://127.0.0.1:8000 (ARGS: yimmo-wsgi flags, e.g. -w 2)
#   ./scripts/dev.sh build          rebuild the C extension (pip install -e .)
#   ./scripts/dev.sh test [ARGS]    setup, build, run the whole test suite
#                                   (ARGS go to pytest); what .ci/run calls
#   ./scripts/dev.sh bench [ARGS]   setup, then bench/run.py (ARGS: see bench/README.md)
#
# Environment: YIMMO_DEBUG=1 / YIMMO_CFLAGS change the build (docs/building.md);
# PYTHON picks the interpreter the virtualenv is made from (default: python3 on
# PATH, which must be >= 3.11); VENV the virtualenv's folder (default: .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"

# Debian packages the build needs. python3-dev/python3-venv serve Debian's own
# python3; a pyenv or other python3 brings its own headers and venv, and they
# are harmless beside it.
APT_BUILD=(build-essential pkg-config python3-dev python3-venv libev-dev libssl-dev zlib1g-dev)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

APT_UPDATED=0
# apt_ensure PKG...: install the packages that are not installed yet, running
# 'apt-get update' once per run and only when something is missing.
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        log "not a Debian system: install these yourself: ${missing[*]}"
        return 0
    fi
    log "apt-get install ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

# A usable interpreter for the virtualenv: python3 (or $PYTHON) >= 3.11.
check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found on PATH"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); yimmo needs Python >= 3.11"
}

ensure_venv() {
    if [ -x "$PY" ] && "$PY" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        return 0
    fi
    [ -e "$VENV" ] && { log "recreating broken virtualenv $VENV"; rm -rf "$VENV"; }
    log "creating virtualenv $VENV from $(command -v "$PYTHON") ($("$PYTHON" -V 2>&1))"
    "$PYTHON" -m venv "$VENV"
}

# pip with the noise turned down.
pip_q() { "$PY" -m pip -q --disable-pip-version-check "$@"; }

# The venv's python for running yimmo. A YIMMO_DEBUG=1 build needs the ASan
# runtime loaded first, since the interpreter itself is not instrumented.
PYRUN=("$PY")
if [ "${YIMMO_DEBUG:-}" = 1 ]; then
    PYRUN=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so)${LD_PRELOAD:+ $LD_PRELOAD}"
           "ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}"
           "UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}" "$PY")
fi

setup() {
    apt_ensure "${APT_BUILD[@]}"
    check_python
    # The headers must belong to the interpreter that builds the extension.
    "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))' \
        || die "no Python.h for $(command -v "$PYTHON"); install its development headers"
    ensure_venv
    # The build runs without isolation so that rebuilds are quick and need no
    # download: the venv itself holds the build requirements. setuptools 70.1+
    # builds wheels by itself and reports compile errors plainly.
    if ! "$PY" -c 'import sys, setuptools, wheel
sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' 2>/dev/null; then
        log "installing build requirements into $VENV"
        pip_q install 'setuptools>=70.1' wheel
    fi
    build '.[test]'
}

# build [SPEC]: (re)build the C extension in place and install yimmo editable.
build() {
    local spec="${1:-.}"
    log "building yimmo${YIMMO_DEBUG:+ (YIMMO_DEBUG=$YIMMO_DEBUG)}"
    pip_q install --no-build-isolation -e "$spec"
    # A missing symbol only shows when the module is loaded: load it now.
    "${PYRUN[@]}" -c 'import yimmo' || die "yimmo built but does not import (see the error above)"
}

run_tests() {
    local rc=0 a paths=(tests) extra=()
    # A sanitizer writes its report to fd 2 as the process dies: keep pytest
    # from capturing that descriptor, or the report is lost.
    if [ "${YIMMO_DEBUG:-}" = 1 ]; then extra=(--capture=sys); fi
    # Paths given on the command line replace the default, tests/.
    for a in "$@"; do
        case "$a" in -*) ;; *) paths=() ;; esac
    done
    log "pytest"
    "${PYRUN[@]}" -m pytest -q "${extra[@]}" "${paths[@]}" "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "dev.sh: pytest collected no tests; that is a failure" >&2
    fi
    [ "$rc" -eq 0 ] || return "$rc"

    # Random valid and hostile traffic (scripts/soak.py): the WSGI server on
    # worker threads and on the loop thread, and yimmo.Server with
    # WebSocket callbacks; each must survive, answer, leak no descriptor
    # and stop cleanly. YIMMO_SOAK_SECONDS sets how long each runs.
    if [ "${YIMMO_SKIP_SOAK:-}" != 1 ]; then
        log "soak"
        for a in "--threads 4" "--threads 0" "--native"; do
            # shellcheck disable=SC2086
            "${PYRUN[@]}" "$ROOT/scripts/soak.py" --seconds "${YIMMO_SOAK_SECONDS:-15}" $a \
                || return $?
        done
    fi

    # WebSocket conformance (docs/websockets.md): the Autobahn|Testsuite
    # against both echo examples, and its permessage-deflate sections.
    if [ "${YIMMO_SKIP_AUTOBAHN:-}" != 1 ]; then
        log "Autobahn: native echo"
        PY="$PY" "$ROOT/scripts/autobahn.sh" fast || return $?
        log "Autobahn: WSGI echo"
        AUTOBAHN_TARGET=wsgi PY="$PY" "$ROOT/scripts/autobahn.sh" fast || return $?
        log "Autobahn: permessage-deflate"
        PY="$PY" "$ROOT/scripts/autobahn.sh" deflate || return $?
    fi

    # Memory safety (docs/building.md): the suite against an ASan+UBSan
    # build, then a representative subset under valgrind memcheck. Both build
    # into build/memcheck and leave the in-place -O2 build alone.
    # YIMMO_SKIP_MEMCHECK=1 skips them for a quick local run.
    if [ "${YIMMO_SKIP_MEMCHECK:-}" != 1 ] && [ "${YIMMO_DEBUG:-}" != 1 ]; then
        log "ASan + UBSan"
        PY="$PY" "$ROOT/scripts/memcheck.sh" asan || return $?
        log "valgrind memcheck"
        PY="$PY" "$ROOT/scripts/memcheck.sh" valgrind || return $?
        # Each parser's fuzz harness for a bounded time on the instrumented
        # (clang, libFuzzer + ASan + UBSan) build, then C line and branch
        # coverage of csrc/ against its floor (docs/building.md, fuzz/README.md).
        log "fuzzing (instrumented build)"
        apt_ensure clang libclang-rt-14-dev
        PY="$PY" "$ROOT/scripts/fuzz.sh" ci || return $?
        log "C coverage"
        PY="$PY" "$ROOT/scripts/coverage.sh" || return $?
    fi
    return 0
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup)
        setup
        log "ready: $VENV (activate with: . $VENV/bin/activate)"
        ;;
    build)
        [ -x "$PY" ] || setup
        build .
        ;;
    serve)
        setup
        log "serving the WSGI example examples/app.py on http://127.0.0.1:8000 (Ctrl-C stops)"
        exec "$VENV/bin/yimmo-wsgi" examples.app:app "$@"
        ;;
    test)
        setup
        # valgrind for the memcheck stage; curl for the README's example.
        apt_ensure valgrind curl
        run_tests "$@"
        ;;
    bench)
        setup
        apt_ensure wrk util-linux
        exec "$PY" bench/run.py "$@"
        ;;
    ""|-h|--help|help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$cmd' (try: setup, serve, build, test, bench)"
        ;;
esac

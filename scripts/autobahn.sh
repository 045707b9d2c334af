#!/usr/bin/env bash
# Autobahn|Testsuite fuzzingclient against examples/ws_echo_native.py, or
# with AUTOBAHN_TARGET=wsgi against `yimmo-wsgi examples.ws_echo:app
# --threads 4` (the WSGI route).
#
#   scripts/autobahn.sh [fast|deflate|all] [CASES]
#
#   fast     every case but 12.* and 13.* (permessage-deflate), ~20 s
#   deflate  the permessage-deflate sections, bounded: $AUTOBAHN_DEFLATE_CASES
#            (default "12.1.*,12.2.*,13.1.*,13.2.*"; the full 216 cases take
#            ~15 min on a 2-CPU box)
#   all      all 517 cases
#   CASES    replaces the mode's case list (e.g. "6.4.*")
#
# The echo server runs on a free loopback port with permessage-deflate
# offered. The suite comes from ../shared/tools/autobahn (setup.sh runs first
# when $AUTOBAHN_HOME, default /tmp/autobahn-py3, is missing). Reports go to
# /tmp/autobahn-reports/yimmo-<mode>-*/ (or $OUTDIR).
#
# Exit status: 0 no case FAILED (run.sh's rule: behavior or close FAILED /
# UNCLEAN), 1 failures or missing cases, or (deflate and all modes) any case
# UNIMPLEMENTED, i.e. permessage-deflate not negotiated, unless
# AUTOBAHN_ALLOW_UNIMPLEMENTED=1; 2 runner or server error.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/../shared/tools/autobahn"
PY="${PY:-$ROOT/.venv/bin/python}"
AUTOBAHN_HOME="${AUTOBAHN_HOME:-/tmp/autobahn-py3}"
export AUTOBAHN_HOME

MODE="${1:-fast}"
CASES="${2:-}"
EXCLUDE=""
case "$MODE" in
    fast) [ -n "$CASES" ] || CASES="*"; EXCLUDE="12.*,13.*" ;;
    deflate) [ -n "$CASES" ] || CASES="${AUTOBAHN_DEFLATE_CASES:-12.1.*,12.2.*,13.1.*,13.2.*}" ;;
    all) [ -n "$CASES" ] || CASES="*" ;;
    -h|--help|help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "autobahn.sh: unknown mode '$MODE' (fast, deflate, all)" >&2; exit 2 ;;
esac

[ -d "$TOOLS" ] || { echo "autobahn.sh: $TOOLS not found" >&2; exit 2; }
if [ ! -x "$AUTOBAHN_HOME/venv/bin/python" ]; then
    echo "autobahn.sh: $AUTOBAHN_HOME missing; running $TOOLS/setup.sh" >&2
    "$TOOLS/setup.sh" || { echo "autobahn.sh: setup.sh failed" >&2; exit 2; }
fi

# A free port: bind to 0, read it, release it (the server binds it right after).
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/autobahn-server.XXXXXX.log)
if [ "${AUTOBAHN_TARGET:-native}" = wsgi ]; then
    (cd "$ROOT" && exec "$PY" -m yimmo examples.ws_echo:app -b "127.0.0.1:$PORT" --threads 4) >"$LOG" 2>&1 &
else
    "$PY" "$ROOT/examples/ws_echo_native.py" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
fi
SERVER=$!
cleanup() {
    if kill -0 "$SERVER" 2>/dev/null; then
        kill -INT "$SERVER" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER" 2>/dev/null
    fi
    wait "$SERVER" 2>/dev/null
}
trap cleanup EXIT

# Wait until the server accepts connections.
for _ in $(seq 100); do
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "autobahn.sh: the echo server exited:" >&2; cat "$LOG" >&2; exit 2
    fi
    "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' \
        "$PORT" 2>/dev/null && break
    sleep 0.1
done

echo "autobahn.sh: mode=$MODE cases=$CASES${EXCLUDE:+ exclude=$EXCLUDE} server=ws://127.0.0.1:$PORT/" >&2
SUMMARY=$(OUTDIR="${OUTDIR:-/tmp/autobahn-reports/yimmo-$MODE-$PORT-$(date +%Y%m%d-%H%M%S)}" \
    AGENT="yimmo" EXCLUDE="$EXCLUDE" "$TOOLS/run.sh" 127.0.0.1 "$PORT" "$CASES")
RC=$?
echo "$SUMMARY"

# 12.*/13.* count as UNIMPLEMENTED when the server declines permessage-deflate:
# in the deflate sections that is a failure, not a pass.
UNIMPL=$(printf '%s\n' "$SUMMARY" | sed -n 's/.* UNIMPLEMENTED=\([0-9]*\).*/\1/p' | tail -1)
if [ "$MODE" != fast ] && [ "${UNIMPL:-0}" -gt 0 ] && [ "${AUTOBAHN_ALLOW_UNIMPLEMENTED:-}" != 1 ]; then
    echo "autobahn.sh: $UNIMPL cases UNIMPLEMENTED: the server did not negotiate permessage-deflate" \
         "(AUTOBAHN_ALLOW_UNIMPLEMENTED=1 accepts that)" >&2
    [ "$RC" -eq 0 ] && RC=1
fi

# The server must have survived the suite.
if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "autobahn.sh: the echo server died during the run:" >&2
    tail -20 "$LOG" >&2
    [ "$RC" -eq 0 ] && RC=2
fi
rm -f "$LOG"
exit "$RC"

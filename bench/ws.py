"""WebSocket echo benchmark: yimmo's native WebSocket server against the
`websockets` library's asyncio server and socketify's (uWebSockets) server.

    .venv/bin/python bench/ws.py                 # 5 s per row
    .venv/bin/python bench/ws.py --quick         # 2 s per row: a smoke test
    .venv/bin/python bench/ws.py --sizes 64,65536 --connections 100 --servers yimmo,websockets

Rows are message size x concurrent connections (default 64 B, 4 KiB, 64 KiB
x 1, 100). For each row every server is started afresh, pinned to CPU 0,
and driven by bench/wsload.c (built here with the system compiler into
build/wsload), pinned to CPU 1: each connection sends one masked binary
message, reads the echo fully, checks it, and sends the next. Reported per
row and server: round trips/s, MB/s (payload bytes echoed per second, 10^6),
server CPU us per round trip (utime+stime of the server's process tree over
the counted seconds, from /proc), CPU busy of server and client, peak RSS,
and ratios against yimmo; on top, yimmo's round trips/s over the websockets
server's, against the issue's target (at least 2x on every row).
"""
import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import APPS, HERE, HOST, RESULTS, ROOT, fmt_mib, log, ratio  # noqa: E402

WSLOAD_SRC = os.path.join(HERE, "wsload.c")
WSLOAD_BIN = os.path.join(ROOT, "build", "wsload")
TARGET = 2.0          # yimmo round trips/s >= 2x the websockets server's, every row
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# --- servers ------------------------------------------------------------------------

class WsServer:
    def __init__(self, build, module, note):
        self.build, self.module, self.note = build, module, note


SERVERS = {
    "yimmo": WsServer(
        lambda port: [sys.executable, os.path.join(ROOT, "examples", "ws_echo_native.py"),
                      "--host", HOST, "--port", str(port), "--no-deflate"],
        "yimmo",
        "`examples/ws_echo_native.py --no-deflate`: `yimmo.Server` with a WebSocket "
        "handler whose `on_message` calls `ws.send(msg)` (the message as received, no copy)"),
    "yimmo-busy-poll": WsServer(
        lambda port: [sys.executable, os.path.join(ROOT, "examples", "ws_echo_native.py"),
                      "--host", HOST, "--port", str(port), "--no-deflate", "--busy-poll", "0.0001"],
        "yimmo",
        "the same with `--busy-poll 0.0001`: `Server(busy_poll=0.0001)`, the loop keeps "
        "polling for 100 us after input instead of sleeping (not the default)"),
    "websockets": WsServer(
        lambda port: [sys.executable, os.path.join(APPS, "ws_echo_websockets.py"),
                      "--host", HOST, "--port", str(port)],
        "websockets",
        "`bench/apps/ws_echo_websockets.py`: `websockets.asyncio.server.serve` on the "
        "default asyncio loop, `async for msg in ws: await ws.send(msg)`, "
        "`compression=None`, `ping_interval=None`"),
    "socketify": WsServer(
        lambda port: [sys.executable, os.path.join(APPS, "ws_echo_socketify.py"),
                      "--host", HOST, "--port", str(port)],
        "socketify",
        "`bench/apps/ws_echo_socketify.py`: `socketify.App().ws()` (uWebSockets via cffi), "
        "`message` handler `ws.send(msg, opcode)`, compression disabled, one process"),
}


# --- the load generator ---------------------------------------------------------------

def build_wsload(cc):
    """Compile bench/wsload.c into build/wsload when missing or older than the source."""
    if (os.path.exists(WSLOAD_BIN)
            and os.path.getmtime(WSLOAD_BIN) >= os.path.getmtime(WSLOAD_SRC)):
        return WSLOAD_BIN
    os.makedirs(os.path.dirname(WSLOAD_BIN), exist_ok=True)
    cmd = [cc, "-O2", "-o", WSLOAD_BIN, WSLOAD_SRC]
    log("building the load generator: %s" % " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("bench: compiling %s failed:\n%s" % (WSLOAD_SRC, r.stderr))
    return WSLOAD_BIN


def run_wsload(binary, server, port, conns, size, seconds, warmup, client_cpu):
    """Run wsload against the running server; read the server tree's CPU time
    when wsload starts and stops counting. Returns the row's figures."""
    cmd = [binary, HOST, str(port), str(conns), str(size), str(seconds), str(warmup)]
    if client_cpu is not None:
        cmd = ["taskset", "-c", client_cpu] + cmd
    result, marks, peak, _ = common.run_marked_load(cmd, server, "wsload", "roundtrips",
                                                    seconds + warmup + 30)
    rt = int(result["roundtrips"])
    secs = float(result["seconds"])
    if rt == 0:
        raise RuntimeError("no round trip completed")
    cpu_s = common.marked_cpu_s(marks, 1)
    client_cpu_s = common.marked_cpu_s(marks, 2)
    return {
        "roundtrips": rt, "seconds": secs, "rps": rt / secs,
        "bytes": int(result["bytes"]), "mbps": int(result["bytes"]) / secs / 1e6,
        "cpu_s": cpu_s, "cpu_us_per_rt": cpu_s * 1e6 / rt, "cpu_util": cpu_s / secs,
        "client_cpu_util": client_cpu_s / secs if client_cpu_s is not None else None,
        "peak_rss": peak, "wsload_command": cmd,
    }


# --- a Python probe: the server answers, and echoes each size correctly -----------------

def _ws_frame(payload, opcode=0x2):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def _recv_exact(s, n, buf):
    while len(buf) < n:
        chunk = s.recv(max(65536, n - len(buf)))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        buf += chunk
    return buf[:n], buf[n:]


def probe(port, sizes=(64,)):
    """Handshake (101 with the right accept, no extension) and one echo of
    each size; raises on any difference."""
    import socket
    with socket.create_connection((HOST, port), timeout=3) as s:
        s.sendall(("GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n" % (HOST, port, WS_KEY)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("handshake answered %r" % head.split(b"\r\n")[0])
        accept = base64.b64encode(hashlib.sha1(
            (WS_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        if accept not in head:
            raise RuntimeError("wrong Sec-WebSocket-Accept")
        if b"sec-websocket-extensions" in head.lower():
            raise RuntimeError("the server negotiated an extension")
        for size in sizes:
            payload = bytes((i * 7 + i // 251) % 26 + 97 for i in range(size))
            s.sendall(_ws_frame(payload))
            while True:
                h, buf = _recv_exact(s, 2, buf)
                n = h[1] & 0x7F
                if n == 126:
                    ext, buf = _recv_exact(s, 2, buf)
                    n = int.from_bytes(ext, "big")
                elif n == 127:
                    ext, buf = _recv_exact(s, 8, buf)
                    n = int.from_bytes(ext, "big")
                body, buf = _recv_exact(s, n, buf)
                if h[0] & 0x08:      # control frame: skip
                    continue
                if h[0] != 0x82 or body != payload:
                    raise RuntimeError("echo of %d bytes came back as opcode %#x, %d bytes"
                                       % (size, h[0] & 0x0F, len(body)))
                break
        s.sendall(_ws_frame(b"\x03\xe8", opcode=0x8))
    return True


# --- one row -------------------------------------------------------------------------------

def bench_one(name, size, conns, args):
    port = common.free_port()
    logpath = os.path.join(RESULTS, "ws-%s-%dBx%d.log" % (name, size, conns))
    proc, cmd = common.start_server(SERVERS[name].build(port), logpath, cpu=args.server_cpu)
    log("[%s %d B x %d] %s" % (name, size, conns, " ".join(cmd)))
    try:
        common.wait_ready(proc, port, args.start_timeout,
                          probe=lambda p: probe(p, sizes=(64, size)))
        res = run_wsload(args.wsload, proc, port, conns, size, args.duration, args.warmup,
                         args.client_cpu)
    finally:
        common.stop(proc)
    res["command"] = cmd
    log("[%s %d B x %d] %.0f round trips/s, %.1f MB/s, %.1f us server CPU/rt, server busy "
        "%.0f%%, client busy %s" % (name, size, conns, res["rps"], res["mbps"],
                                    res["cpu_us_per_rt"], 100 * res["cpu_util"],
                                    "%.0f%%" % (100 * res["client_cpu_util"])
                                    if res["client_cpu_util"] is not None else "-"))
    return res


# --- report --------------------------------------------------------------------------------

def fmt_size(n):
    return "%d KiB" % (n // 1024) if n >= 1024 and n % 1024 == 0 else "%d B" % n


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def _git(*a):
    try:
        return subprocess.run(["git"] + list(a), cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def summary(rows_order, results, servers):
    """One line per row: round trips/s of each server, yimmo / websockets
    against the target, yimmo / socketify."""
    ours = [s for s in servers if s.startswith("yimmo")]
    peers = [s for s in servers if not s.startswith("yimmo")]
    head = ["size", "conns"] + ["%s rt/s" % s for s in servers] + \
           ["%s / %s" % (o, p) for o in ours for p in peers] + \
           ["target for %s (>= %.0fx websockets)" % (o, TARGET) for o in ours]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    verdicts = []
    for size, conns in rows_order:
        r = results.get((size, conns), {})
        cells = [fmt_size(size), str(conns)]
        for s in servers:
            cells.append("%.0f" % r[s]["rps"] if isinstance(r.get(s), dict) else "skipped")
        for o in ours:
            for p in peers:
                cells.append("%.2fx" % (r[o]["rps"] / r[p]["rps"])
                             if isinstance(r.get(o), dict) and isinstance(r.get(p), dict) else "-")
        w = r.get("websockets")
        for o in ours:
            y = r.get(o)
            if isinstance(y, dict) and isinstance(w, dict):
                ok = y["rps"] >= TARGET * w["rps"]
                cells.append("met" if ok else "**NOT met**")
                if o == "yimmo":
                    verdicts.append(ok)
            else:
                cells.append("-")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out), verdicts


def row_table(rows):
    base = rows.get("yimmo") if isinstance(rows.get("yimmo"), dict) else None
    out = ["| server | round trips/s | vs yimmo | MB/s | server CPU us/rt | vs yimmo | "
           "server CPU busy | client CPU busy | peak RSS |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        if not isinstance(r, dict):
            out.append("| %s | skipped: %s | | | | | | | |" % (name, str(r).replace("|", "\\|")))
            continue
        out.append("| %s | %.0f | %s | %.1f | %.1f | %s | %.0f%% | %s | %s |" % (
            name, r["rps"], ratio(r["rps"], base["rps"]) if base else "-", r["mbps"],
            r["cpu_us_per_rt"], ratio(r["cpu_us_per_rt"], base["cpu_us_per_rt"]) if base else "-",
            100 * r["cpu_util"],
            "%.0f%%" % (100 * r["client_cpu_util"]) if r["client_cpu_util"] is not None else "-",
            fmt_mib(r["peak_rss"])))
    return "\n".join(out)


def report(args, argv, rows_order, results, busy, load_end):
    so = os.path.join(ROOT, "yimmo")
    ext = [f for f in os.listdir(so) if f.startswith("_yimmo") and f.endswith(".so")]
    ext_when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(
        os.path.getmtime(os.path.join(so, ext[0])))) if ext else "?")
    dirty = _git("status", "--porcelain")
    table, verdicts = summary(rows_order, results, args.servers)
    lines = [
        "# yimmo WebSocket echo benchmark", "",
        "- when: %s" % common.now(),
        "- machine: %s" % common.machine(),
        "- machine busy before the run (all CPUs, over 1 s): %.0f%%; load average "
        "(1, 5, 15 min) at the start: %s, at the end: %s (this run's own server and "
        "client add up to about 2)" % (100 * busy, args.load_start, load_end),
        "- yimmo %s at commit %s%s, extension built %s; websockets %s, socketify %s"
        % (common.version_of("yimmo"), _git("rev-parse", "--short", "HEAD") or "?",
           " plus uncommitted changes" if dirty else "", ext_when,
           common.version_of("websockets"), common.version_of("socketify")),
        "- command: `%s`" % " ".join(["python", "bench/ws.py"] + argv),
        "- load: `%s HOST PORT CONNS SIZE %g %g` (bench/wsload.c: epoll, one thread; "
        "each connection sends one masked binary message, reads the echo fully and checks "
        "it, then sends the next); %g s warm-up on the same connections, then %g s counted; "
        "every server restarted for every row"
        % (os.path.relpath(args.wsload, ROOT), args.duration, args.warmup, args.warmup,
           args.duration),
        "- server pinned to CPU %s, client to CPU %s" % (args.server_cpu or "(none)",
                                                         args.client_cpu or "(none)"),
        "- MB/s = payload bytes echoed per second / 10^6 (each byte crosses the loopback "
        "once each way); server CPU us/rt = utime+stime of the server's process tree over "
        "the counted seconds / round trips; CPU busy = CPU seconds / wall seconds (100% = "
        "one CPU); ratios in the per-row tables are against yimmo's row (above 1 in the "
        "CPU column: the peer spends more CPU per round trip)",
        "",
        "## Round trips per second, and the target (yimmo >= %.0fx the websockets server)"
        % TARGET, "", table, "",
    ]
    if verdicts:
        lines += ["Target met on %d of %d rows." % (sum(verdicts), len(verdicts)), ""]
    for size, conns in rows_order:
        rows = results.get((size, conns), {})
        if rows:
            lines += ["## %s messages, %d connection%s" % (fmt_size(size), conns,
                                                            "" if conns == 1 else "s"), "",
                      row_table(rows), ""]
    lines += ["## Servers", ""]
    for name in args.servers:
        lines.append("- %s %s: %s" % (name, common.version_of(SERVERS[name].module),
                                      SERVERS[name].note))
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="WebSocket echo: yimmo vs websockets and socketify.")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help="comma-separated, from: %s (default: all)" % ", ".join(SERVERS))
    ap.add_argument("--sizes", default="64,4096,65536",
                    help="message sizes in bytes (default 64,4096,65536)")
    ap.add_argument("--connections", default="1,100",
                    help="concurrent connections per row (default 1,100)")
    ap.add_argument("-d", "--duration", type=float, default=5.0,
                    help="counted seconds per row (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="uncounted seconds first, on the same connections (default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 s rows, 0.5 s warm-up")
    ap.add_argument("--server-cpu", default="0",
                    help="CPU list for the server (default 0; '' = no pinning)")
    ap.add_argument("--client-cpu", default="1",
                    help="CPU list for the client (default 1; '' = no pinning)")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"),
                    help="C compiler for bench/wsload.c (default $CC or cc)")
    ap.add_argument("--start-timeout", type=float, default=20.0,
                    help="seconds to wait for a server to answer (default 20)")
    ap.add_argument("-o", "--output", default=os.path.join(RESULTS, "ws-latest.md"),
                    help="markdown report (default bench/results/ws-latest.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
    args.servers = [n.strip() for n in args.servers.split(",") if n.strip()]
    bad = [n for n in args.servers if n not in SERVERS]
    if bad:
        ap.error("unknown server(s): %s" % ", ".join(bad))
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        conns = [int(x) for x in args.connections.split(",") if x.strip()]
    except ValueError:
        ap.error("--sizes and --connections: comma-separated integers")
    if any(s < 1 for s in sizes) or any(c < 1 for c in conns):
        ap.error("sizes and connection counts must be positive")

    if (args.server_cpu or args.client_cpu) and not shutil.which("taskset"):
        sys.exit("bench: taskset not found (util-linux); or pass --server-cpu '' --client-cpu ''")
    if (os.cpu_count() or 1) < 2:
        log("bench: one CPU only: pinning disabled, server and client share it")
        args.server_cpu = args.client_cpu = ""
    args.server_cpu, args.client_cpu = args.server_cpu or None, args.client_cpu or None
    args.wsload = build_wsload(args.cc)
    os.makedirs(RESULTS, exist_ok=True)

    busy = common.machine_busy()
    args.load_start = loadavg()
    if busy > 0.10:
        log("bench: the machine is %.0f%% busy before starting: figures will be noisy"
            % (100 * busy))

    unusable = {}
    for name in args.servers:
        ok, why = common.ensure_module(SERVERS[name].module,
                                       None if name.startswith("yimmo") else name,
                                       install=False)
        if not ok:
            log("[%s] skipped: %s" % (name, why))
            unusable[name] = why

    rows_order = [(s, c) for s in sizes for c in conns]
    results = {}
    for size, c in rows_order:
        rows = results.setdefault((size, c), {})
        for name in args.servers:
            if name in unusable:
                rows[name] = unusable[name]
                continue
            try:
                rows[name] = bench_one(name, size, c, args)
            except Exception as e:  # noqa: BLE001 - one failure skips that row
                why = (str(e).splitlines() or [type(e).__name__])[0]
                log("[%s %d B x %d] skipped: %s" % (name, size, c, why))
                rows[name] = why

    text = report(args, argv, rows_order, results, busy, loadavg())
    print(text)
    with open(args.output, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"args": vars(args), "busy_before": busy,
                   "results": {"%dx%d" % k: v for k, v in results.items()}}, f, indent=1)
    log("written: %s" % os.path.relpath(args.output, ROOT))
    return 0 if any(isinstance(r, dict) for rows in results.values()
                    for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

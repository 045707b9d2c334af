#!/usr/bin/env python3
"""Idle keep-alive connections: what each costs yimmo-wsgi, and whether new
requests are still served promptly while they are open.

  1. start `yimmo-wsgi -w 1 --keep-alive 600` (so that the server does not
     close the idle connections during the test) on bench/apps/wsgi_bench.py,
     pinned to --server-cpu; raise this process's RLIMIT_NOFILE soft limit
     first (the server inherits it);
  2. warm the worker up (a few hundred requests on fresh and reused
     connections, one at a time, so that the request path is paged in), then
     read the worker's VmRSS and RssAnon from /proc/<worker>/status;
  3. open --connections (2,000) connections, each sending one GET / and
     reading the answer, then leaving the connection open and idle;
  4. read the worker's RSS again (also half-way, for the growth over the
     second half alone): (after - before) / connections is the cost
     of one idle connection (target: under 2 KiB; kernel socket buffers are
     not in the process's RSS and not counted);
  5. while all of them are open: time --probes requests on new connections
     and on one of the idle connections, and check that a sample of the idle
     connections still answers;
  6. close everything and stop the server (its process group only).

Writes bench/results/idle-latest.md.
"""
import argparse
import os
import resource
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import HOST, RESULTS, ROOT, log  # noqa: E402

HELLO = b"Hello, world!\n"
TARGET_BYTES = 2048


def worker_pid(manager, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [pid for pid, (ppid, _, _) in common.tree(manager).items() if ppid == manager]
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError("no worker process under the manager %d" % manager)


def rss(pid):
    return common.status_kib(pid, "VmRSS"), common.status_kib(pid, "RssAnon")


def get(s, port):
    s.sendall(common.request_bytes(port))
    status, _, body, _ = common.read_response(s)
    if status != 200 or body != HELLO:
        raise RuntimeError("GET / answered %d %r" % (status, body[:40]))


def timed_new_request(port):
    """Milliseconds for one GET / on a new connection; inf if it failed or
    took over 5 s."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=5) as s:
            get(s, port)
    except (OSError, RuntimeError) as e:
        log("[idle] a new-connection request failed: %s" % (e or type(e).__name__))
        return float("inf")
    return (time.perf_counter() - t0) * 1e3


def settle(pid, seconds=1.0):
    """Let the worker go idle, then read its RSS."""
    time.sleep(seconds)
    return rss(pid)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="Idle keep-alive connections against yimmo-wsgi.")
    ap.add_argument("-n", "--connections", type=int, default=2000,
                    help="idle connections to open (default 2000)")
    ap.add_argument("--threads", type=int, default=0,
                    help="yimmo-wsgi --threads (default 0: the app on the loop thread)")
    ap.add_argument("--probes", type=int, default=50,
                    help="timed requests while the idle connections are open (default 50)")
    ap.add_argument("--server-cpu", default="0", help="CPU list for the server ('' = no pinning)")
    ap.add_argument("-o", "--output", default=os.path.join(RESULTS, "idle-latest.md"))
    args = ap.parse_args(argv)
    args.server_cpu = args.server_cpu or None
    os.makedirs(RESULTS, exist_ok=True)

    need = args.connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit("bench: RLIMIT_NOFILE hard limit %d < %d needed" % (hard, need))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        log("RLIMIT_NOFILE soft limit raised from %d to %d" % (soft, need))

    port = common.free_port()
    cmd = [sys.executable, "-m", "yimmo", "-b", "%s:%d" % (HOST, port), "-w", "1",
           "--threads", str(args.threads), "--keep-alive", "600", "--backlog", "4096",
           "--log-level", "warning", "wsgi_bench:app"]
    proc, cmd = common.start_server(cmd, os.path.join(RESULTS, "idle.stderr.log"),
                                    cpu=args.server_cpu)
    log("[idle] %s" % " ".join(cmd))
    conns = []
    try:
        common.wait_ready(proc, port, 20)
        wpid = worker_pid(proc.pid)
        # Warm-up: fresh connections and a reused one, more than enough to page
        # in the request path and fill the allocator's free lists.
        for _ in range(200):
            timed_new_request(port)
        with socket.create_connection((HOST, port), timeout=5) as s:
            for _ in range(200):
                get(s, port)
        before = settle(wpid)
        base_lat = [timed_new_request(port) for _ in range(args.probes)]

        t0 = time.monotonic()
        half = args.connections // 2
        for i in range(args.connections):
            s = socket.create_connection((HOST, port), timeout=5)
            get(s, port)
            conns.append(s)
            if i + 1 == half:
                open_secs = time.monotonic() - t0
                mid = settle(wpid)
                t0 = time.monotonic()
        open_secs += time.monotonic() - t0
        after = settle(wpid)
        worker_fds = len(os.listdir("/proc/%d/fd" % wpid))

        lat = [timed_new_request(port) for _ in range(args.probes)]
        t1 = time.perf_counter()
        get(conns[len(conns) // 2], port)
        reuse_ms = (time.perf_counter() - t1) * 1e3
        sample = conns[::max(1, len(conns) // 100)]
        alive = 0
        for s in sample:
            try:
                get(s, port)
                alive += 1
            except (OSError, RuntimeError):
                pass
        if proc.poll() is not None:
            raise RuntimeError("server exited with status %d" % proc.returncode)
        cpu_ticks = common.tree_cpu_ticks(proc.pid)
    finally:
        for s in conns:
            s.close()
        common.stop(proc)

    n = args.connections
    per_conn_rss = (after[0] - before[0]) * 1024 / n
    per_conn_anon = (after[1] - before[1]) * 1024 / n if after[1] is not None else None
    marginal = (after[0] - mid[0]) * 1024 / (n - half)
    p = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    ok_mem = per_conn_rss < TARGET_BYTES and marginal < TARGET_BYTES
    failed = sum(1 for x in lat if x == float("inf"))
    ok_lat = alive == len(sample) and not failed
    lines = [
        "# yimmo idle keep-alive connections", "",
        "- when: %s" % common.now(),
        "- machine: %s" % common.machine(),
        "- command: `%s`" % " ".join(["python", "bench/idle.py"] + argv),
        "- server: `%s`" % " ".join(cmd),
        "- RLIMIT_NOFILE soft limit: %d" % resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "",
        "| figure | value |", "|---|---:|",
        "| idle connections held open | %d (opened in %.2f s, each after one GET /) |"
        % (n, open_secs),
        "| open file descriptors in the worker (pid %d) with them open | %d |"
        % (wpid, worker_fds),
        "| worker VmRSS before / at %d / at %d | %d / %d / %d KiB |"
        % (half, n, before[0], mid[0], after[0]),
        "| worker RssAnon before / at %d / at %d | %s / %s / %s KiB |"
        % (half, n, before[1], mid[1], after[1]),
        "| **VmRSS growth per idle connection** (0 to %d) | **%.0f bytes** (target < %d): %s |"
        % (n, per_conn_rss, TARGET_BYTES, "met" if ok_mem else "NOT met"),
        "| VmRSS growth per idle connection, second half only (%d to %d) | %.0f bytes |"
        % (half, n, marginal),
        "| RssAnon growth per idle connection | %s bytes |"
        % ("-" if per_conn_anon is None else "%.0f" % per_conn_anon),
        "| new-connection GET / before they opened: median / p95 / max | "
        "%.2f / %.2f / %.2f ms |" % (statistics.median(base_lat), p(base_lat, 0.95),
                                     max(base_lat)),
        "| **new-connection GET / with them open: median / p95 / max** | "
        "**%.2f / %.2f / %.2f ms** (%d requests, %d failed or over 5 s) |"
        % (statistics.median(lat), p(lat, 0.95), max(lat), len(lat), failed),
        "| GET / on one of the idle connections | %.2f ms |" % reuse_ms,
        "| sampled idle connections still answering | %d of %d: %s |"
        % (alive, len(sample), "ok" if ok_lat else "SOME CLOSED"),
        "| server CPU over the whole test | %.2f s |" % (cpu_ticks / common.TICKS),
        "",
        "Page granularity: RSS moves in 4 KiB pages, so the per-connection figure is "
        "an average over all %d connections. Kernel socket buffers are not part of a "
        "process's RSS and are not counted." % n,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with open(args.output, "w") as f:
        f.write(text)
    log("written: %s" % os.path.relpath(args.output, ROOT))
    return 0 if ok_mem and ok_lat else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""WSGI benchmark matrix: yimmo-wsgi against the other WSGI servers.

Every server serves the same app, bench/apps/wsgi_bench.py, in five scenarios:

  hello     GET /        14-byte text/plain body
  10k       GET /10k     10 KiB body
  json      GET /json    small JSON body, serialized per request
  post64k   POST /echo   64 KiB request body read and echoed back  (lua/post64k.lua)
  pipeline  GET /        16 requests pipelined per write           (lua/pipeline.lua)

For each round (--workers, default "1,2": one worker, then two workers for
the servers that have workers), for each server and each scenario:

  1. start the server, pinned to --server-cpu (taskset -c 0), on 127.0.0.1
     and a free port, in its own process group;
  2. wait until it answers, and check the scenario's response (and, for
     pipeline, that 16 pipelined requests get 16 answers);
  3. warm up with wrk, then measure with
       taskset -c 1 wrk -t1 -c50 -dDs --latency [-s SCRIPT] URL
  4. read utime+stime of the server's process tree from /proc before and
     after the measured run (CPU us per request), and sample the tree's RSS
     every 100 ms (peak RSS);
  5. stop it (SIGTERM, then SIGKILL, to its process group only).

Prints one table per round and scenario, with ratios against yimmo's row of
the same round, and writes them to bench/results/wsgi-latest.md (and .json).
Missing peers are pip-installed into the running interpreter's environment;
one that fails to install, start or answer is skipped with the reason.
"""
import argparse
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import (HOST, LUA, RESULTS, ROOT, WSGI_SERVERS, fmt_mib, fmt_us, log,  # noqa: E402
                    ratio)

APP = "wsgi_bench:app"
HELLO = b"Hello, world!\n"
TEN_K = b"0123456789abcdef" * 640
POST_BODY = b"0123456789abcdef" * 4096
PIPELINE_DEPTH = 16


def _check_pipeline(port):
    """DEPTH pipelined GET / on one connection must get DEPTH answers."""
    req = common.request_bytes(port) * PIPELINE_DEPTH
    with socket.create_connection((HOST, port), timeout=3) as s:
        s.sendall(req)
        buf = b""
        for i in range(PIPELINE_DEPTH):
            try:
                status, _, body, buf = common.read_response(s, buf)
            except OSError as e:
                raise RuntimeError("does not pipeline: %d pipelined GETs got %d answers, then: %s"
                                   % (PIPELINE_DEPTH, i, e or type(e).__name__))
            if status != 200 or body != HELLO:
                raise RuntimeError("pipelined response %d: %d %r" % (i + 1, status, body[:40]))


class Scenario:
    def __init__(self, name, path, expect, method="GET", body=None, headers=(), script=None,
                 script_args=(), desc=""):
        self.name, self.path, self.expect, self.method = name, path, expect, method
        self.body, self.headers, self.script, self.script_args = body, headers, script, script_args
        self.desc = desc

    def probe(self, port):
        return common.fetch(port, self.method, self.path, self.body, self.headers)

    def check(self, port):
        status, head, body = self.probe(port)
        if status != 200:
            raise RuntimeError("%s %s answered %d" % (self.method, self.path, status))
        if self.expect is not None and body != self.expect:
            raise RuntimeError("%s %s answered %d bytes %r..., expected %d bytes"
                               % (self.method, self.path, len(body), body[:40], len(self.expect)))
        if self.name == "pipeline":
            _check_pipeline(port)
        return head, body


SCENARIOS = {
    "hello": Scenario("hello", "/", HELLO, desc="GET /: 14-byte text/plain body"),
    "10k": Scenario("10k", "/10k", TEN_K, desc="GET /10k: 10,240-byte body"),
    "json": Scenario("json", "/json", json.dumps({"message": "Hello, World!"}).encode(),
                     desc="GET /json: {\"message\": \"Hello, World!\"} via json.dumps"),
    "post64k": Scenario("post64k", "/echo", POST_BODY, method="POST", body=POST_BODY,
                        headers=[("Content-Type", "application/octet-stream")],
                        script=os.path.join(LUA, "post64k.lua"),
                        desc="POST /echo with a 64 KiB body, read from wsgi.input and echoed"),
    "pipeline": Scenario("pipeline", "/", HELLO, script=os.path.join(LUA, "pipeline.lua"),
                         script_args=(PIPELINE_DEPTH,),
                         desc="GET / pipelined %d deep (wrk counts each response)"
                         % PIPELINE_DEPTH),
}


def bench_one(name, workers, scen, args):
    peer = WSGI_SERVERS[name]
    port = common.free_port()
    label = name if workers == 1 else "%s-w%d" % (name, workers)
    logpath = os.path.join(RESULTS, "wsgi-%s-%s.stderr.log" % (label, scen.name))
    proc, cmd = common.start_server(peer.build(port, APP, workers), logpath, cpu=args.server_cpu)
    log("[%s %s] %s" % (label, scen.name, " ".join(cmd)))
    try:
        common.wait_ready(proc, port, args.start_timeout, probe=scen.probe)
        if workers > 1:
            # Give every worker time to come up before measuring.
            time.sleep(1.0)
        head, _ = scen.check(port)
        wrk = lambda secs: common.wrk_cmd(  # noqa: E731
            port, secs, threads=args.threads, connections=args.connections,
            cpu=args.client_cpu, path=scen.path, script=scen.script,
            script_args=scen.script_args)
        if args.warmup > 0:
            common.run_wrk(wrk(args.warmup), args.warmup)
        res = common.measure(proc, wrk(args.duration), args.duration)
    finally:
        common.stop(proc)
    res["command"] = cmd
    res["wrk_command"] = wrk(args.duration)
    res["response_head"] = head.decode("latin-1")
    res["errors"] = res["socket_errors"] + res["non_2xx"]
    if not res.get("lat_p99_us") and res.get("lat_avg_us"):
        # wrk 4.1 sometimes prints an all-zero distribution for pipelined runs.
        res["lat_p99_us"] = None
    log("[%s %s] %.0f req/s, %.1f us CPU/req, p99 %s, peak RSS %s, errors %d"
        % (label, scen.name, res["rps"], res["cpu_us_per_req"], fmt_us(res.get("lat_p99_us")),
           fmt_mib(res["peak_rss"]), res["errors"]))
    return res


# --- report ---------------------------------------------------------------------------

def scenario_table(rows, skipped):
    """rows: {server: result}; ratios against the 'yimmo' row."""
    base = rows.get("yimmo")
    out = ["| server | requests/s | vs yimmo | p99 | peak RSS | CPU us/req | vs yimmo | "
           "server CPU busy | wrk CPU busy | bytes/resp | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        per = r.get("read_bytes", 0) / r["requests"] if r.get("requests") else 0
        out.append("| %s | %.0f | %s | %s | %s | %.1f | %s | %s | %s | %s | %d |" % (
            name, r["rps"], ratio(r["rps"], base["rps"]) if base else "-",
            fmt_us(r.get("lat_p99_us")), fmt_mib(r["peak_rss"]), r["cpu_us_per_req"],
            ratio(r["cpu_us_per_req"], base["cpu_us_per_req"]) if base else "-",
            busy(r.get("cpu_util")), busy(r.get("client_cpu_util")), "%.0f" % per, r["errors"]))
    for name, why in skipped.items():
        out.append("| %s | skipped: %s | | | | | | | | | |" % (name, why.replace("|", "\\|")))
    return "\n".join(out)


def busy(util):
    return "%.0f%%" % (100 * util) if util is not None else "-"


def clean(r):
    """A run counts for 'best peer' only if under 1% of requests failed."""
    return r["errors"] <= 0.01 * max(r["requests"], 1)


def targets(results):
    """The issue's one-worker targets: yimmo against the best clean peer."""
    one = results.get(1, {})
    lines = []

    def best_peer(scen, key, low):
        peers = {n: r for n, r in one.get(scen, {}).items()
                 if not n.startswith("yimmo") and clean(r)}
        if not peers:
            return None, None
        n = (min if low else max)(peers, key=lambda k: peers[k][key])
        return n, peers[n][key]

    for scen, key, low, goal in (("hello", "cpu_us_per_req", True, 0.8),
                                 ("json", "cpu_us_per_req", True, 0.8),
                                 ("10k", "cpu_us_per_req", True, 0.8),
                                 ("pipeline", "rps", False, 1.3),
                                 ("post64k", "rps", False, 1.2)):
        y = one.get(scen, {}).get("yimmo")
        peer, v = best_peer(scen, key, low)
        if y is None or peer is None:
            continue
        r = y[key] / v
        ok = r <= goal if low else r >= goal
        what = "CPU us/request" if low else "requests/s"
        line = ("- %s, %s: yimmo %.1f vs best peer %s %.1f = %.2fx (target %s %.1fx): %s"
                % (scen, what, y[key], peer, v, r, "<=" if low else ">=", goal,
                   "met" if ok else "NOT met"))
        if not low:
            # Requests/s compare servers only while wrk has CPU to spare.
            line += "; wrk CPU busy %s against yimmo, %s against %s" % (
                busy(y.get("client_cpu_util")), busy(one[scen][peer].get("client_cpu_util")), peer)
        lines.append(line)
    return lines


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def report(args, argv, results, skipped, busy):
    lines = [
        "# yimmo WSGI benchmark matrix", "",
        "- when: %s" % common.now(),
        "- machine: %s" % common.machine(),
        "- machine busy before the run (all CPUs, over 1 s): %.0f%%; other work on the "
        "machine skews the figures" % (100 * busy),
        "- load average (1, 5, 15 min) at the start: %s; at the end: %s (this run's own "
        "server and wrk add up to about 2)" % (args.load_start, loadavg()),
        "- command: `%s`" % " ".join(["python", "bench/wsgi.py"] + argv),
        "- load: `wrk -t%d -c%d -d%ds --latency [-s SCRIPT] URL` after a %d s warm-up, "
        "the server restarted for each scenario"
        % (args.threads, args.connections, args.duration, args.warmup),
        "- server pinned to CPU %s, wrk to CPU %s%s"
        % (args.server_cpu or "(none)", args.client_cpu or "(none)",
           "; with 2 workers both workers share the server's CPU" if args.server_cpu
           and len(args.workers) > 1 else ""),
        "- CPU us/req = utime+stime of the server's process tree over the measured run / "
        "requests; peak RSS = largest sum of VmRSS over the tree, sampled every 100 ms "
        "(shared pages of forked workers count once per process); bytes/resp = bytes wrk "
        "read / responses (head + body, a check that the whole body came back); ratios are "
        "against yimmo's row in the same table",
        "",
    ]
    t = targets(results)
    if t:
        lines += ["## Targets (one worker)", ""] + t + [""]
    for workers in args.workers:
        for scen in args.scenarios:
            rows = results.get(workers, {}).get(scen, {})
            sk = skipped.get(workers, {}).get(scen, {})
            if not rows and not sk:
                continue
            lines += ["## %s, %d worker%s: %s" % (scen, workers, "" if workers == 1 else "s",
                                                  SCENARIOS[scen].desc), "",
                      scenario_table(rows, sk), ""]
    lines += ["## Servers", ""]
    for name in args.servers:
        peer = WSGI_SERVERS[name]
        lines.append("- %s %s: %s" % (name, common.version_of(peer.module), peer.note))
    lines += ["", "A p99 of '-' means wrk printed an all-zero latency distribution (wrk 4.1 "
              "does so in some pipelined runs); its average latency is in the JSON file.",
              "", "gunicorn's sync worker closes the connection after every response, so its "
              "figures include a TCP handshake per request, and it answers only the first "
              "request of each pipelined batch, so it is skipped there.", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="WSGI benchmark matrix: yimmo-wsgi vs its peers.")
    ap.add_argument("--servers", default=",".join(WSGI_SERVERS),
                    help="comma-separated, from: %s (default: all)" % ", ".join(WSGI_SERVERS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated, from: %s (default: all)" % ", ".join(SCENARIOS))
    ap.add_argument("--workers", default="1,2",
                    help="rounds, as worker counts (default 1,2; servers without workers "
                         "are left out of rounds above 1)")
    ap.add_argument("-d", "--duration", type=int, default=10, help="measured seconds (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds (default 2)")
    ap.add_argument("-c", "--connections", type=int, default=50,
                    help="wrk connections (default 50)")
    ap.add_argument("-t", "--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--server-cpu", default="0",
                    help="CPU list for the server (default 0; '' = no pinning)")
    ap.add_argument("--client-cpu", default="1",
                    help="CPU list for wrk (default 1; '' = no pinning)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 s warm-up")
    ap.add_argument("--start-timeout", type=float, default=20.0,
                    help="seconds to wait for a server to answer (default 20)")
    ap.add_argument("--no-install", action="store_true",
                    help="skip missing peers instead of pip-installing them")
    ap.add_argument("-o", "--output", default=os.path.join(RESULTS, "wsgi-latest.md"),
                    help="markdown report (default bench/results/wsgi-latest.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2, 1

    def names(text, known, what):
        got = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in got if n not in known]
        if bad:
            ap.error("unknown %s: %s" % (what, ", ".join(bad)))
        return got
    args.servers = names(args.servers, WSGI_SERVERS, "server(s)")
    args.scenarios = names(args.scenarios, SCENARIOS, "scenario(s)")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        ap.error("--workers: comma-separated integers")
    args.server_cpu, args.client_cpu = common.check_tools(args.server_cpu or None,
                                                          args.client_cpu or None)
    os.makedirs(RESULTS, exist_ok=True)
    busy = common.machine_busy()
    args.load_start = loadavg()
    if busy > 0.10:
        log("bench: the machine is %.0f%% busy before starting: figures will be noisy"
            % (100 * busy))

    usable, unusable = [], {}
    for name in args.servers:
        peer = WSGI_SERVERS[name]
        ok, why = common.ensure_module(peer.module, peer.requirement,
                                       install=not args.no_install)
        if ok:
            usable.append(name)
        else:
            log("[%s] skipped: %s" % (name, why))
            unusable[name] = why

    results, skipped = {}, {}
    for workers in args.workers:
        for scen in args.scenarios:
            rows = results.setdefault(workers, {}).setdefault(scen, {})
            sk = skipped.setdefault(workers, {}).setdefault(scen, {})
            for name in args.servers:
                if workers > 1 and not WSGI_SERVERS[name].multi_worker:
                    continue
                label = name if workers == 1 else "%s -w %d" % (name, workers)
                if name in unusable:
                    sk[name] = unusable[name]
                    continue
                try:
                    r = bench_one(name, workers, SCENARIOS[scen], args)
                except Exception as e:  # noqa: BLE001 - one failure skips that row
                    why = (str(e).splitlines() or [type(e).__name__])[0]
                    log("[%s %s] skipped: %s" % (label, scen, why))
                    sk[name] = why
                    continue
                rows[name] = r

    text = report(args, argv, results, skipped, busy)
    print(text)
    with open(args.output, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"args": vars(args), "busy_before": busy, "results": results,
                   "skipped": skipped}, f, indent=1)
    log("written: %s" % os.path.relpath(args.output, ROOT))
    return 0 if any(rows for sc in results.values() for rows in sc.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Hello-world benchmark: yimmo.Server against bjoern and gunicorn.

Each server answers GET / with the same 14-byte body ("Hello, world!\\n",
text/plain). For each one, in turn:

  1. start it pinned to one CPU (taskset -c SERVER_CPU), on 127.0.0.1 only;
  2. wait until it accepts and check that it answers with the expected body;
  3. warm up with a short wrk run, then measure with
       taskset -c CLIENT_CPU wrk -t1 -cCONNS -dDURATIONs --latency URL
  4. read the CPU time (utime+stime, summed over the server's process tree)
     from /proc/<pid>/stat just before and just after the measured run;
  5. stop it (only the processes this script started).

Prints a table of requests/s, latency and server CPU microseconds per request,
with ratios against yimmo, and writes it to bench/results/latest.md (and
latest.json). Run it with the project's virtualenv python
(./scripts/dev.sh bench does), so that yimmo is importable; missing peers are
pip-installed into that environment on demand, and skipped if that fails.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import (APPS, HOST, RESULTS, ROOT, WSGI_SERVERS, ensure_module, fmt_us,  # noqa: E402
                    log, machine, machine_busy, ratio)

BODY = b"Hello, world!\n"
WSGI_APP = "hello_wsgi:app"   # bench/apps/hello_wsgi.py, what the peers serve


# --- the servers --------------------------------------------------------------

def _cmd_yimmo(port):
    return [sys.executable, os.path.join(APPS, "hello_yimmo.py"), "--port", str(port)]


def _peer(name, **kw):
    """A WSGI peer from common.WSGI_SERVERS, one worker, serving hello_wsgi."""
    build = WSGI_SERVERS[name].build
    return lambda port: build(port, WSGI_APP, 1, **kw)


# name -> (command builder, module that must be importable, pip requirement)
SERVERS = {
    "yimmo": (_cmd_yimmo, "yimmo", None),
    "bjoern": (_peer("bjoern"), "bjoern", "bjoern"),
    "gunicorn": (_peer("gunicorn"), "gunicorn", "gunicorn"),
    "gunicorn-gthread": (_peer("gunicorn-gthread", threads=1), "gunicorn", "gunicorn"),
}
DEFAULT_SERVERS = ["yimmo", "bjoern", "gunicorn", "gunicorn-gthread"]
NOTES = {
    "gunicorn": "sync worker (-w 1): closes the connection after every response",
    "gunicorn-gthread": "-w 1 --worker-class gthread --threads 1: keep-alive",
}


def wrk_cmd(args, port, seconds):
    return common.wrk_cmd(port, seconds, threads=args.threads, connections=args.connections,
                          cpu=args.client_cpu)


def run_wrk(args, port, seconds):
    return common.run_wrk(wrk_cmd(args, port, seconds), seconds)


# --- one server ---------------------------------------------------------------

def bench_one(name, args):
    build, _, _ = SERVERS[name]
    port = common.free_port()
    proc, cmd = common.start_server(build(port), os.path.join(RESULTS, "%s.stderr.log" % name),
                                    cpu=args.server_cpu)
    log("[%s] %s" % (name, " ".join(cmd)))
    try:
        _, head, body = common.wait_ready(proc, port, args.start_timeout)
        if body != BODY:
            raise RuntimeError("GET / answered %r, expected %r" % (body[:80], BODY))
        if args.warmup > 0:
            run_wrk(args, port, args.warmup)
        res = common.measure(proc, wrk_cmd(args, port, args.duration), args.duration)
    finally:
        common.stop(proc)
    res["response_head"] = head.decode("latin-1")
    res["response_bytes"] = len(head) + 4 + len(body)
    res["command"] = cmd
    res["version"] = server_version(name)
    log("[%s] %.0f req/s, %.1f us CPU/req, p50 %s, p99 %s"
        % (name, res["rps"], res["cpu_us_per_req"], fmt_us(res.get("lat_p50_us")),
           fmt_us(res.get("lat_p99_us"))))
    return res


def server_version(name):
    return common.version_of(SERVERS[name][1])


# --- report -------------------------------------------------------------------

def table(results, skipped):
    base = results.get("yimmo")
    rows = ["| server | version | requests/s | vs yimmo | CPU us/request | vs yimmo | "
            "server CPU busy | latency avg | p50 | p99 | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        errs = r["socket_errors"] + r["non_2xx"]
        rows.append("| %s | %s | %.0f | %s | %.1f | %s | %s | %s | %s | %s | %d |" % (
            name, r["version"], r["rps"],
            ratio(r["rps"], base["rps"]) if base else "-",
            r["cpu_us_per_req"],
            ratio(r["cpu_us_per_req"], base["cpu_us_per_req"]) if base else "-",
            "%.0f%%" % (100 * r["cpu_util"]) if r["cpu_util"] is not None else "-",
            fmt_us(r.get("lat_avg_us")), fmt_us(r.get("lat_p50_us")),
            fmt_us(r.get("lat_p99_us")), errs))
    for name, why in skipped.items():
        rows.append("| %s | - | skipped: %s | | | | | | | | |" % (name, why.replace("|", "\\|")))
    return "\n".join(rows)


def report(args, results, skipped, argv):
    now = common.now()
    lines = [
        "# yimmo hello-world benchmark", "",
        "- when: %s" % now,
        "- machine: %s" % machine(),
        "- machine busy before the run (all CPUs, over 1 s): %s; other work skews the figures"
        % args.busy_before,
        "- command: `%s`" % " ".join(["python", "bench/run.py"] + argv),
        "- load: `%s` after a %d s warm-up" % (" ".join(wrk_cmd(args, 0, args.duration))
                                               .replace(":0/", ":PORT/"), args.warmup),
        "- server pinned to CPU %s, wrk to CPU %s; CPU us/request = server process tree's "
        "utime+stime over the measured run / requests"
        % (args.server_cpu if args.server_cpu is not None else "(none)",
           args.client_cpu if args.client_cpu is not None else "(none)"),
        "", table(results, skipped), "",
    ]
    for name, note in NOTES.items():
        if name in results:
            lines.append("- %s: %s" % (name, note))
    lines += ["", "## Response heads (GET /)", ""]
    for name, r in results.items():
        lines += ["%s (%d bytes with body):" % (name, r["response_bytes"]), "```",
                  r["response_head"], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="Hello-world benchmark: yimmo vs bjoern and gunicorn.")
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                    help="comma-separated, from: %s (default: all)" % ", ".join(SERVERS))
    ap.add_argument("-d", "--duration", type=int, default=10, help="measured seconds (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds (default 2)")
    ap.add_argument("-c", "--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("-t", "--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--server-cpu", default="0", help="CPU list for the server (default 0; '' = no pinning)")
    ap.add_argument("--client-cpu", default="1", help="CPU list for wrk (default 1; '' = no pinning)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 s warm-up")
    ap.add_argument("--start-timeout", type=float, default=20.0,
                    help="seconds to wait for a server to accept (default 20)")
    ap.add_argument("--no-install", action="store_true", help="skip missing peers instead of pip-installing them")
    ap.add_argument("-o", "--output", default=os.path.join(RESULTS, "latest.md"),
                    help="markdown report (default bench/results/latest.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2, 1
    args.server_cpu = args.server_cpu or None
    args.client_cpu = args.client_cpu or None

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        ap.error("unknown server(s): %s" % ", ".join(unknown))
    args.server_cpu, args.client_cpu = common.check_tools(args.server_cpu, args.client_cpu)
    os.makedirs(RESULTS, exist_ok=True)
    busy = machine_busy()
    args.busy_before = "%.0f%%" % (100 * busy)
    if busy > 0.10:
        log("bench: the machine is %.0f%% busy before starting: figures will be noisy" % (100 * busy))

    results, skipped = {}, {}
    for name in names:
        _, module, requirement = SERVERS[name]
        ok, why = ensure_module(module, requirement, install=not args.no_install)
        if not ok:
            log("[%s] skipped: %s" % (name, why))
            skipped[name] = why
            continue
        try:
            results[name] = bench_one(name, args)
        except Exception as e:  # noqa: BLE001 - one server's failure skips it
            log("[%s] skipped: %s (see bench/results/%s.stderr.log)" % (name, e, name))
            skipped[name] = str(e).splitlines()[0]

    text = report(args, results, skipped, argv)
    print(text)
    with open(args.output, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"args": vars(args), "results": results, "skipped": skipped}, f, indent=1)
    log("written: %s" % os.path.relpath(args.output, ROOT))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())

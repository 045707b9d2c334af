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
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APPS = os.path.join(HERE, "apps")
RESULTS = os.path.join(HERE, "results")
HOST = "127.0.0.1"
BODY = b"Hello, world!\n"
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- the servers --------------------------------------------------------------

def _cmd_yimmo(port):
    return [sys.executable, os.path.join(APPS, "hello_yimmo.py"), "--port", str(port)]


def _cmd_bjoern(port):
    return [sys.executable, os.path.join(APPS, "run_bjoern.py"), "--port", str(port)]


def _gunicorn(extra):
    def cmd(port):
        return [sys.executable, "-m", "gunicorn", "--chdir", APPS, "-b", "%s:%d" % (HOST, port),
                "-w", "1", "--log-level", "warning"] + extra + ["hello_wsgi:app"]
    return cmd


# name -> (command builder, module that must be importable, pip requirement)
SERVERS = {
    "yimmo": (_cmd_yimmo, "yimmo", None),
    "bjoern": (_cmd_bjoern, "bjoern", "bjoern"),
    "gunicorn": (_gunicorn([]), "gunicorn", "gunicorn"),
    "gunicorn-gthread": (_gunicorn(["--worker-class", "gthread", "--threads", "1"]),
                         "gunicorn", "gunicorn"),
}
DEFAULT_SERVERS = ["yimmo", "bjoern", "gunicorn", "gunicorn-gthread"]
NOTES = {
    "gunicorn": "sync worker (-w 1): closes the connection after every response",
    "gunicorn-gthread": "-w 1 --worker-class gthread --threads 1: keep-alive",
}


def have_module(name):
    return importlib.util.find_spec(name) is not None


def ensure_module(module, requirement, install=True):
    """(True, None) if module is importable, pip-installing requirement if
    needed and allowed; else (False, why)."""
    if requirement is None:
        # yimmo itself: importable only once the C extension is built.
        try:
            importlib.import_module(module)
            return True, None
        except ImportError as e:
            return False, "cannot import %s (build it: pip install -e .): %s" % (module, e)
    if have_module(module):
        return True, None
    if not install:
        return False, "not installed (--no-install)"
    log("installing %s into %s" % (requirement, sys.prefix))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", requirement])
    importlib.invalidate_caches()
    if r.returncode == 0 and have_module(module):
        return True, None
    return False, "pip install %s failed" % requirement


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fetch(port, timeout=2.0):
    """One keep-alive GET / (the request wrk sends): (head bytes, body bytes)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (HOST.encode(), port))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the response head")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        while m is None or len(body) < int(m.group(1)):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return head, body


def wait_ready(proc, port, timeout):
    """Wait until the server accepts; return (head, body) of one GET /."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("exited with status %d before accepting" % proc.returncode)
        try:
            return fetch(port)
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise RuntimeError("did not accept on port %d within %.0f s (%s)" % (port, timeout, last))


def stop(proc):
    """Stop a server we started: SIGTERM its process group, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log("  (no exit 5 s after SIGTERM: SIGKILL)")
    # Anything left in the group (a gunicorn worker outliving its master).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# --- CPU time from /proc ------------------------------------------------------

def _stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    # The command name (field 2) may hold spaces: split after its ')'.
    fields = data[data.rindex(")") + 2:].split()
    ppid = int(fields[1])               # field 4
    utime, stime = int(fields[11]), int(fields[12])  # fields 14, 15
    return ppid, utime + stime


def tree_cpu_ticks(root):
    """utime+stime of root and all its live descendants, in clock ticks."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                procs[int(name)] = _stat(int(name))
            except (OSError, ValueError):
                pass
    children = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in procs:
            continue
        seen.add(pid)
        total += procs[pid][1]
        todo.extend(children.get(pid, ()))
    return total


# --- wrk ----------------------------------------------------------------------

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _usec(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(out):
    r = {}
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:
        r["lat_avg_us"], r["lat_stdev_us"], r["lat_max_us"] = map(_usec, m.groups())
    for pct in ("50", "75", "90", "99"):
        m = re.search(r"^\s*%s(?:\.0+)?%%\s+(\S+)" % pct, out, re.M)
        if m:
            r["lat_p%s_us" % pct] = _usec(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        r["requests"] = int(m.group(1))
        r["seconds"] = float(m.group(2)) * _UNITS[m.group(3)] / 1e6
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(m.group(1)) if m else 0
    return r


def wrk_cmd(args, port, seconds):
    cmd = ["wrk", "-t%d" % args.threads, "-c%d" % args.connections, "-d%ds" % seconds,
           "--latency", "http://%s:%d/" % (HOST, port)]
    if args.client_cpu is not None:
        cmd = ["taskset", "-c", args.client_cpu] + cmd
    return cmd


def run_wrk(args, port, seconds):
    r = subprocess.run(wrk_cmd(args, port, seconds), capture_output=True, text=True,
                       timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError("wrk failed (%d): %s" % (r.returncode, r.stderr.strip() or r.stdout))
    return r.stdout


# --- one server ---------------------------------------------------------------

def bench_one(name, args):
    build, _, _ = SERVERS[name]
    port = free_port()
    cmd = build(port)
    if args.server_cpu is not None:
        cmd = ["taskset", "-c", args.server_cpu] + cmd
    log("[%s] %s" % (name, " ".join(cmd)))
    errlog = open(os.path.join(RESULTS, "%s.stderr.log" % name), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=errlog,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        head, body = wait_ready(proc, port, args.start_timeout)
        if body != BODY:
            raise RuntimeError("GET / answered %r, expected %r" % (body[:80], BODY))
        if args.warmup > 0:
            run_wrk(args, port, args.warmup)
        before = tree_cpu_ticks(proc.pid)
        out = run_wrk(args, port, args.duration)
        after = tree_cpu_ticks(proc.pid)
        if proc.poll() is not None:
            raise RuntimeError("exited with status %d during the run" % proc.returncode)
    finally:
        stop(proc)
        errlog.close()
    res = parse_wrk(out)
    if "rps" not in res or not res.get("requests"):
        raise RuntimeError("could not read wrk's output:\n" + out)
    res["cpu_s"] = (after - before) / TICKS
    res["cpu_us_per_req"] = res["cpu_s"] * 1e6 / res["requests"]
    res["cpu_util"] = res["cpu_s"] / res["seconds"] if res.get("seconds") else None
    res["response_head"] = head.decode("latin-1")
    res["response_bytes"] = len(head) + 4 + len(body)
    res["wrk_output"] = out
    res["command"] = cmd
    res["version"] = server_version(name)
    log("[%s] %.0f req/s, %.1f us CPU/req, p50 %s, p99 %s"
        % (name, res["rps"], res["cpu_us_per_req"], fmt_us(res.get("lat_p50_us")),
           fmt_us(res.get("lat_p99_us"))))
    return res


def server_version(name):
    module = SERVERS[name][1]
    if module == "yimmo":
        try:
            import yimmo
            return yimmo.__version__
        except Exception:  # noqa: BLE001 - a version is only informative
            return "?"
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # noqa: BLE001
        return "?"


# --- report -------------------------------------------------------------------

def fmt_us(v):
    if v is None:
        return "-"
    return "%.0f us" % v if v < 1000 else "%.2f ms" % (v / 1000)


def ratio(v, base):
    return "%.2fx" % (v / base) if base else "-"


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


def machine_busy(seconds=1.0):
    """Fraction of all CPUs' time spent busy over the next few seconds."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])   # idle + iowait, total (without guest)
    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d CPUs, %s, Python %s" % (model, os.cpu_count() or 0, platform.platform(),
                                           platform.python_version())


def report(args, results, skipped, argv):
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
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
    if not shutil.which("wrk"):
        sys.exit("bench: wrk not found: apt-get install -y wrk (./scripts/dev.sh bench does it)")
    if (args.server_cpu or args.client_cpu) and not shutil.which("taskset"):
        sys.exit("bench: taskset not found (util-linux); or pass --server-cpu '' --client-cpu ''")
    if (args.server_cpu or args.client_cpu) and (os.cpu_count() or 1) < 2:
        log("bench: one CPU only: pinning disabled, server and wrk share it")
        args.server_cpu = args.client_cpu = None
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

"""Shared pieces of the benchmark drivers (bench/run.py, bench/wsgi.py,
bench/idle.py): starting and stopping servers, reading CPU time and RSS of a
process tree from /proc, running wrk and reading its output, the WSGI peers'
command lines, and the report helpers.

Nothing here touches a process it did not start: servers run in their own
session (process group) and are stopped by signalling that group only.
"""
import datetime
import importlib
import importlib.util
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APPS = os.path.join(HERE, "apps")
LUA = os.path.join(HERE, "lua")
RESULTS = os.path.join(HERE, "results")
HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- installing peers -----------------------------------------------------------

def have_module(name):
    return importlib.util.find_spec(name) is not None


def ensure_module(module, requirement, install=True):
    """(True, None) if module is importable, pip-installing requirement into
    the running interpreter's environment if needed and allowed; else
    (False, why)."""
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
                        "--disable-pip-version-check", requirement],
                       capture_output=True, text=True)
    importlib.invalidate_caches()
    if r.returncode == 0 and have_module(module):
        return True, None
    tail = (r.stderr or r.stdout).strip().splitlines()
    return False, "pip install %s failed%s" % (requirement, (": " + tail[-1][:160]) if tail else "")


def version_of(module):
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


# --- talking to a server ----------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def read_response(s, buf=b""):
    """Read one HTTP/1.1 response (Content-Length or chunked) from socket s;
    returns (status, head, body, rest of buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if m:
        n = int(m.group(1))
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed in the body")
            buf += chunk
        return status, head, buf[:n], buf[n:]
    if re.search(rb"(?im)^transfer-encoding:\s*chunked\s*$", head):
        body = b""
        while True:
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed in a chunk")
                buf += chunk
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(buf) < size + 2:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed in a chunk")
                buf += chunk
            body, buf = body + buf[:size], buf[size + 2:]
            if size == 0:
                return status, head, body, buf
    # Neither: the body runs to the end of the connection.
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return status, head, buf, b""
        buf += chunk


def request_bytes(port, method="GET", path="/", body=None, headers=()):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (HOST, port)]
    lines += ["%s: %s" % h for h in headers]
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def fetch(port, method="GET", path="/", body=None, headers=(), timeout=2.0):
    """One keep-alive request: (status, head bytes, body bytes)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request_bytes(port, method, path, body, headers))
        status, head, body, _ = read_response(s)
    return status, head, body


def wait_ready(proc, port, timeout, probe=None):
    """Wait until the server accepts and answers; returns probe(port) (by
    default fetch(port): one GET /)."""
    probe = probe or fetch
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("exited with status %d before accepting" % proc.returncode)
        try:
            return probe(port)
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise RuntimeError("did not accept on port %d within %.0f s (%s)" % (port, timeout, last))


# --- starting and stopping a server ------------------------------------------------

def start_server(cmd, logpath, cpu=None, env=None):
    """Start cmd in a new session (its own process group), output to logpath,
    optionally pinned with taskset. Returns (Popen, the command run)."""
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [APPS] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.pop("WEB_CONCURRENCY", None)
    full_env.update(env or {})
    with open(logpath, "w") as errlog:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=errlog,
                                stderr=subprocess.STDOUT, start_new_session=True, env=full_env)
    return proc, cmd


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
    # Anything left in the group (a worker outliving its master).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# --- CPU time and RSS from /proc ---------------------------------------------------

def _stat(pid):
    """(ppid, utime+stime in ticks, rss in bytes) of one process."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    # The command name (field 2) may hold spaces: split after its ')'.
    fields = data[data.rindex(")") + 2:].split()
    ppid = int(fields[1])                            # field 4
    cpu = int(fields[11]) + int(fields[12])          # fields 14, 15: utime, stime
    rss = int(fields[21]) * PAGE                     # field 24: rss in pages
    return ppid, cpu, rss


def tree(root):
    """{pid: (ppid, cpu ticks, rss bytes)} of root and its live descendants."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                procs[int(name)] = _stat(int(name))
            except (OSError, ValueError, IndexError):
                pass
    children = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in out or pid not in procs:
            continue
        out[pid] = procs[pid]
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_ticks(root):
    """utime+stime of root and all its live descendants, in clock ticks."""
    return sum(cpu for _, cpu, _ in tree(root).values())


def tree_rss(root):
    """RSS of root and all its live descendants, in bytes (pages shared
    between forked workers count once per process)."""
    return sum(rss for _, _, rss in tree(root).values())


def status_kib(pid, key):
    """A 'kB' field of /proc/PID/status (VmRSS, RssAnon, VmHWM...), in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


class RssSampler(threading.Thread):
    """Samples the RSS of a process tree every `interval` seconds; .peak is
    the largest sum seen."""

    def __init__(self, root, interval=0.1):
        super().__init__(daemon=True)
        self.root, self.interval, self.peak = root, interval, 0
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def sample(self):
        try:
            self.peak = max(self.peak, tree_rss(self.root))
        except OSError:
            pass

    def finish(self):
        self._done.set()
        self.join()
        self.sample()
        return self.peak


def proc_cpu_ticks(pid):
    """utime+stime of one process in clock ticks, or None once it is gone."""
    try:
        return _stat(pid)[1]
    except (OSError, ValueError, IndexError):
        return None


def run_marked_load(cmd, server, name, result_key, limit, extra=lambda: None):
    """Run one of bench/'s C load generators (wsload, tlsload) against a
    running server. They print "start" and "stop" around the counted period
    and end with a line of KEY=VALUE pairs that starts with result_key.

    At each mark: the time, the server tree's and the load generator's CPU
    ticks, and extra(). The server tree's peak RSS is sampled in between.
    limit bounds the whole run in seconds (the generator ends by itself;
    this only guards a hang). Returns (result dict, {mark: tuple}, peak RSS,
    stderr); raises RuntimeError when the run or the server failed."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(limit, p.kill)
    timer.start()
    sampler = RssSampler(server.pid)
    marks, result, err = {}, None, ""
    try:
        for line in p.stdout:
            line = line.strip()
            if line in ("start", "stop"):
                marks[line] = (time.monotonic(), tree_cpu_ticks(server.pid),
                               proc_cpu_ticks(p.pid), extra())
                if line == "start":
                    sampler.start()
            elif line.startswith(result_key + "="):
                result = dict(kv.split("=", 1) for kv in line.split())
        err = p.stderr.read()
        p.wait()
    finally:
        timer.cancel()
        peak = sampler.finish() if sampler.is_alive() else None
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0 or result is None or "start" not in marks or "stop" not in marks:
        raise RuntimeError("%s failed (status %s): %s"
                           % (name, p.returncode, (err.strip().splitlines() or ["no output"])[-1]))
    if server.poll() is not None:
        raise RuntimeError("server exited with status %d during the run" % server.returncode)
    return result, marks, peak, err


def marked_cpu_s(marks, i):
    """CPU seconds between the start and stop marks of field i (1: server
    tree, 2: load generator), or None when a reading is missing."""
    a, b = marks["start"][i], marks["stop"][i]
    return (b - a) / TICKS if a is not None and b is not None else None


# --- wrk ----------------------------------------------------------------------------

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
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)([KMGT]?B) read", out)
    if m:
        r["requests"] = int(m.group(1))
        r["seconds"] = float(m.group(2)) * _UNITS[m.group(3)] / 1e6
        r["read_bytes"] = float(m.group(4)) * 1024 ** "BKMGT".index(m.group(5)[0])
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(m.group(1)) if m else 0
    return r


def wrk_cmd(port, seconds, threads=1, connections=50, cpu=None, path="/", script=None,
            script_args=()):
    cmd = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append("http://%s:%d%s" % (HOST, port, path))
    if script_args:
        cmd += ["--"] + [str(a) for a in script_args]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    return cmd


def run_wrk(cmd, seconds):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError("wrk failed (%d): %s" % (r.returncode, r.stderr.strip() or r.stdout))
    return r.stdout


def _children_cpu_s():
    """CPU seconds of this process's children that have been waited for: taken
    around one wrk run (taskset execs wrk; the servers are not reaped meanwhile)."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def measure(proc, cmd, seconds):
    """Run wrk (cmd) for `seconds` against the running server proc; returns
    wrk's parsed figures plus the server tree's CPU time and peak RSS, and
    wrk's own CPU time."""
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        before = tree_cpu_ticks(proc.pid)
        wrk_before = _children_cpu_s()
        out = run_wrk(cmd, seconds)
        wrk_cpu_s = _children_cpu_s() - wrk_before
        after = tree_cpu_ticks(proc.pid)
    finally:
        peak = sampler.finish()
    if proc.poll() is not None:
        raise RuntimeError("exited with status %d during the run" % proc.returncode)
    res = parse_wrk(out)
    if "rps" not in res or not res.get("requests"):
        raise RuntimeError("could not read wrk's output:\n" + out)
    res["cpu_s"] = (after - before) / TICKS
    res["cpu_us_per_req"] = res["cpu_s"] * 1e6 / res["requests"]
    res["cpu_util"] = res["cpu_s"] / res["seconds"] if res.get("seconds") else None
    # wrk's own CPU: near 100 % the load generator, not the server, sets requests/s.
    res["client_cpu_util"] = wrk_cpu_s / res["seconds"] if res.get("seconds") else None
    res["peak_rss"] = peak
    res["wrk_output"] = out
    return res


# --- the WSGI servers ----------------------------------------------------------------
#
# Each builder takes (port, app, workers) -- app is "module:name" importable
# from bench/apps (start_server puts it on PYTHONPATH) -- and returns argv.

def _yimmo(threads):
    def cmd(port, app, workers):
        return [sys.executable, "-m", "yimmo", "-b", "%s:%d" % (HOST, port), "-w", str(workers),
                "--threads", str(threads), "--log-level", "warning", app]
    return cmd


def _run_peer(server):
    def cmd(port, app, workers):
        return [sys.executable, os.path.join(APPS, "run_peer.py"), server, "--port", str(port),
                "--workers", str(workers), "--app", app]
    return cmd


def _granian(port, app, workers):
    return [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", HOST,
            "--port", str(port), "--workers", str(workers), "--log-level", "warning",
            "--no-ws", app]


def _gunicorn(worker_class=None, threads=None):
    def cmd(port, app, workers, threads=threads):
        extra = ["--worker-class", worker_class, "--threads", str(threads)] if worker_class else []
        return [sys.executable, "-m", "gunicorn", "--chdir", APPS, "-b", "%s:%d" % (HOST, port),
                "-w", str(workers), "--log-level", "warning"] + extra + [app]
    return cmd


def _waitress(port, app, workers):
    return [sys.executable, "-m", "waitress", "--host", HOST, "--port", str(port),
            "--threads", "4", app]


class Peer:
    def __init__(self, build, module, requirement, multi_worker, note):
        self.build, self.module, self.requirement = build, module, requirement
        self.multi_worker, self.note = multi_worker, note


WSGI_SERVERS = {
    "yimmo": Peer(_yimmo(0), "yimmo", None, True,
                  "`yimmo-wsgi -w N --threads 0`: the app runs on the event-loop thread"),
    "yimmo-threads4": Peer(_yimmo(4), "yimmo", None, True,
                           "`yimmo-wsgi -w N --threads 4`: the app runs on 4 worker threads"),
    "bjoern": Peer(_run_peer("bjoern"), "bjoern", "bjoern", False,
                   "`bjoern.run(app)`: single process, C on libev"),
    "fastwsgi": Peer(_run_peer("fastwsgi"), "fastwsgi", "fastwsgi", True,
                     "`fastwsgi.run(app, workers=N)`: C on libuv; workers are forks"),
    "granian": Peer(_granian, "granian", "granian", True,
                    "`granian --interface wsgi --workers N`: Rust (hyper/tokio), default "
                    "runtime and blocking threads"),
    "socketify": Peer(_run_peer("socketify"), "socketify", "socketify", True,
                      "`socketify.WSGI(app).run(workers=N)`: uWebSockets (C++) via cffi"),
    "gunicorn": Peer(_gunicorn(), "gunicorn", "gunicorn", True,
                     "`gunicorn -w N` sync worker: closes the connection after each response"),
    "gunicorn-gthread": Peer(_gunicorn("gthread", threads=4),
                             "gunicorn", "gunicorn", True,
                             "`gunicorn -w N --worker-class gthread --threads 4`: keep-alive"),
    "waitress": Peer(_waitress, "waitress", "waitress", False,
                     "`waitress-serve --threads 4`: single process, pure Python"),
}


# --- reporting --------------------------------------------------------------------------

def fmt_us(v):
    if v is None:
        return "-"
    return "%.0f us" % v if v < 1000 else "%.2f ms" % (v / 1000)


def fmt_mib(b):
    return "-" if not b else "%.1f MiB" % (b / 1048576)


def ratio(v, base):
    return "%.2fx" % (v / base) if base else "-"


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


def now():
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def check_tools(server_cpu, client_cpu):
    """Exit if wrk/taskset are missing; returns the (server, client) CPU lists
    to use (None = no pinning)."""
    import shutil
    if not shutil.which("wrk"):
        sys.exit("bench: wrk not found: apt-get install -y wrk (./scripts/dev.sh bench does it)")
    if (server_cpu or client_cpu) and not shutil.which("taskset"):
        sys.exit("bench: taskset not found (util-linux); or pass --server-cpu '' --client-cpu ''")
    if (server_cpu or client_cpu) and (os.cpu_count() or 1) < 2:
        log("bench: one CPU only: pinning disabled, server and wrk share it")
        return None, None
    return server_cpu, client_cpu

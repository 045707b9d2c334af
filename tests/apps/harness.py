"""Run the real `python -m yimmo` in a subprocess and watch its log.

Readiness is read from the log (the manager logs "Worker ready (pid: N)" at
debug level when a worker has loaded the app and built its server), never
from fixed sleeps. Only the manager we started and the workers it reports
are ever signalled.
"""
import http.client
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent
REPO = APPS.parent.parent
TIMEOUT = 15.0

LISTEN_RE = re.compile(r"Listening at: (\S+) \((\d+)\)")
BOOT_RE = re.compile(r"Booting worker with pid: (\d+)")
READY_RE = re.compile(r"Worker ready \(pid: (\d+)\)")
EXIT_RE = re.compile(r"Worker exiting \(pid: (\d+)\)")

# Variables that would leak the caller's settings into the server under test
# (PYTHONUNBUFFERED too: a user's stdout is a buffered pipe or file).
_SCRUB = ("PORT", "WEB_CONCURRENCY", "PYTHONUNBUFFERED")


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIMMO_") and k not in _SCRUB}
    # The repository's yimmo, whatever the working directory.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra or {})
    return env



ERR = "yimmo-wsgi: error: "


def assert_one_line_error(r, *fragments):
    """The CLI refused with exit status 2 and one line naming what was wrong."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERR), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in r.stderr
    return lines[0]


def in_background(fn, *args):
    """Run fn(*args) on a thread; returns a dict filled with 'result' or 'error'."""
    out = {}

    def run():
        try:
            out["result"] = fn(*args)
        except BaseException as e:
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    out["thread"] = t
    return out

def run_cli(*args, env=None, cwd=APPS, timeout=TIMEOUT, **kw):
    """Run the CLI to completion: CompletedProcess with text stdout/stderr."""
    return subprocess.run([sys.executable, "-m", "yimmo", *args], cwd=str(cwd), env=clean_env(env),
                          capture_output=True, text=True, timeout=timeout, **kw)


def unix_request(path, data, timeout=TIMEOUT):
    """Send data over the Unix socket at path; everything until the server closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def wait_until(pred, timeout=TIMEOUT, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # A zombie is gone for our purposes (its parent has not reaped it yet).
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Yimmo:
    """A `python -m yimmo` manager process and its log."""

    def __init__(self, *args, env=None, cwd=APPS, bind="127.0.0.1:0", pass_fds=(), debug=True,
                 nofile=None):
        argv = list(args)
        if bind is not None:
            argv = ["-b", bind] + argv
        if debug:
            argv = ["--log-level", "debug"] + argv
        self.argv = argv
        limit = None
        if nofile is not None:  # RLIMIT_NOFILE of the manager and its workers
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen([sys.executable, "-m", "yimmo", *argv], cwd=str(cwd),
                                     env=clean_env(env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, pass_fds=pass_fds,
                                     preexec_fn=limit)
        self.err_lines, self.out_lines = [], []
        self.cond = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.err_lines), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stdout, self.out_lines), daemon=True)]
        for t in self.readers:
            t.start()
        self.url = self.host = self.port = None

    def _read(self, stream, into):
        for line in stream:
            with self.cond:
                into.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    # -- the log

    @property
    def stderr(self):
        with self.cond:
            return "\n".join(self.err_lines)

    def matches(self, regex, lines=None):
        with self.cond:
            src = list(self.err_lines if lines is None else lines)
        return [m for m in (regex.search(l) for l in src) if m]

    def wait_log(self, regex, count=1, timeout=TIMEOUT, lines=None):
        """Wait until regex matched count log lines; the matches."""
        if isinstance(regex, str):
            regex = re.compile(regex)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                src = self.err_lines if lines is None else lines
                found = [m for m in (regex.search(l) for l in src) if m]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self.readers)):
                    raise AssertionError("no %d lines matching %r; exit=%r; log:\n%s"
                                         % (count, regex.pattern, self.proc.poll(), "\n".join(self.err_lines)))
                self.cond.wait(min(left, 0.1))

    def ready_pids(self):
        return [int(m.group(1)) for m in self.matches(READY_RE)]

    def wait_ready(self, workers=1, timeout=TIMEOUT):
        """Wait for the listening line and `workers` ready workers; (host, port)."""
        m = self.wait_log(LISTEN_RE, timeout=timeout)[0]
        self.url = m.group(1).split(",")[0]
        if self.url.startswith("http://"):
            hostport = self.url[len("http://"):]
            host, _, port = hostport.rpartition(":")
            self.host, self.port = host.strip("[]"), int(port)
        self.wait_log(READY_RE, count=workers, timeout=timeout)
        return self

    def live_workers(self):
        """Ready workers that have not exited."""
        return [p for p in self.ready_pids() if not pid_gone(p)]

    # -- HTTP

    def get(self, path="/", timeout=TIMEOUT, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def raw(self, data, timeout=TIMEOUT):
        """Send bytes on a new connection; everything until the server closes."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                out += chunk
            return out

    # -- signals and exit

    def signal(self, sig):
        self.proc.send_signal(sig)

    def signal_worker(self, pid, sig):
        assert pid in self.ready_pids(), "not a worker of this server: %d" % pid
        os.kill(pid, sig)

    def wait_exit(self, timeout=TIMEOUT):
        rc = self.proc.wait(timeout)
        for t in self.readers:
            t.join(timeout)
        return rc

    def close(self):
        """Teardown: stop the manager (fast), then make sure every worker is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in set(self.ready_pids()) | {int(m.group(1)) for m in self.matches(BOOT_RE)}:
            if not pid_gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for t in self.readers:
            t.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def server():
    """Factory: server(*cli_args, workers=N, wait=True, **Yimmo kw) -> a ready Yimmo.

    Every server started is torn down (fast stop, then any straggler killed).
    """
    started = []

    def start(*args, workers=1, wait=True, **kw):
        y = Yimmo(*args, **kw)
        started.append(y)
        if wait:
            y.wait_ready(workers)
        return y

    yield start
    for y in started:
        y.close()

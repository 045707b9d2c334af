"""The manager process of `yimmo-wsgi`, driven through the real CLI.

Each test starts `python -m yimmo` on 127.0.0.1:0 (the manager binds once and
logs the real port), waits for its workers' "ready" log lines, then signals
only the processes it started.
"""
import os
import platform
import re
import signal
import socket
import threading
import time

import pytest

import yimmo
from apps.harness import (BOOT_RE, EXIT_RE, READY_RE, in_background, pid_gone, run_cli,  # noqa: F401
                           server, unix_request, wait_until)

HAVE_WSGISERVER = hasattr(yimmo, "WSGIServer")



def _in_flight(mark, n=1):
    """The app wrote n 'start' lines to the mark file: n slow requests are in flight."""
    return wait_until(lambda: os.path.exists(mark) and open(mark).read().count("start") >= n,
                      what="the slow request to start")


# --- Start, serve, stop -------------------------------------------------------


def test_startup_lines_and_workers_share_the_socket(server):
    y = server("-w", "2", "hello:application", workers=2)
    log = y.stderr
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[%d\] \[INFO\] Starting yimmo %s$"
                     % (y.proc.pid, re.escape(yimmo.__version__)), log, re.M), log
    assert "Listening at: http://127.0.0.1:%d (%d)" % (y.port, y.proc.pid) in log
    assert "Using worker: yimmo" in log
    booted = [int(m.group(1)) for m in y.matches(re.compile(r"Booting worker with pid: (\d+)"))]
    assert sorted(booted) == sorted(y.ready_pids()) and len(booted) == 2
    assert y.proc.pid not in booted
    for _ in range(4):
        status, headers, body = y.get("/")
        assert status == 200 and int(headers["X-Pid"]) in booted
    y.signal(signal.SIGTERM)
    assert y.wait_exit() == 0
    assert "Shutting down: Master" in y.stderr
    assert all(pid_gone(p) for p in booted)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_term_and_int_drain_in_flight_requests(server, tmp_path, sig):
    mark = str(tmp_path / "mark")
    y = server("--graceful-timeout", "10", "hello:application", env={"YIMMO_TEST_MARK": mark})
    req = in_background(y.get, "/sleep/1")
    _in_flight(mark)
    t0 = time.monotonic()
    y.signal(sig)
    assert y.wait_exit() == 0
    req["thread"].join(5)
    assert "error" not in req, req.get("error")
    status, _, body = req["result"]
    assert status == 200 and body.startswith(b"hello from")
    assert time.monotonic() - t0 < 8
    # The listening socket is gone with the manager.
    with pytest.raises(OSError):
        socket.create_connection((y.host, y.port), timeout=1).close()


def test_graceful_timeout_kills_a_worker_that_will_not_finish(server, tmp_path):
    mark = str(tmp_path / "mark")
    y = server("--graceful-timeout", "0.5", "-t", "0", "hello:application", env={"YIMMO_TEST_MARK": mark})
    pid = y.ready_pids()[0]
    req = in_background(y.get, "/sleep/30")
    _in_flight(mark)
    t0 = time.monotonic()
    y.signal(signal.SIGTERM)
    assert y.wait_exit() == 0
    assert time.monotonic() - t0 < 5
    assert pid_gone(pid)
    req["thread"].join(5)
    assert "error" in req  # The connection was cut.


def test_quit_stops_fast(server, tmp_path):
    mark = str(tmp_path / "mark")
    y = server("--graceful-timeout", "30", "hello:application", env={"YIMMO_TEST_MARK": mark})
    req = in_background(y.get, "/sleep/20")
    _in_flight(mark)
    t0 = time.monotonic()
    y.signal(signal.SIGQUIT)
    assert y.wait_exit() == 0
    assert time.monotonic() - t0 < 5
    req["thread"].join(5)
    assert not req["thread"].is_alive()


def test_hup_replaces_workers_and_rereads_config(server, tmp_path):
    conf = tmp_path / "yimmo.toml"
    conf.write_text("workers = 1\n")
    y = server("-c", str(conf), "hello:application", workers=1)
    old = y.ready_pids()
    conf.write_text("workers = 2\n")
    y.signal(signal.SIGHUP)
    y.wait_log(READY_RE, count=3)
    new = [p for p in y.ready_pids() if p not in old]
    assert len(new) == 2
    wait_until(lambda: pid_gone(old[0]), what="the old worker to stop")
    seen = set()
    for _ in range(20):
        seen.add(int(y.get("/")[1]["X-Pid"]))
    assert seen <= set(new)
    y.signal(signal.SIGTERM)
    assert y.wait_exit() == 0


def test_hup_with_a_bad_config_keeps_serving(server, tmp_path):
    conf = tmp_path / "yimmo.toml"
    conf.write_text("workers = 1\n")
    y = server("-c", str(conf), "hello:application")
    old = y.ready_pids()
    conf.write_text("workers = 'many'\n")
    y.signal(signal.SIGHUP)
    y.wait_log(r"Reload: bad configuration, keeping the old one: .*workers")
    assert y.get("/")[0] == 200 and y.live_workers() == old


def test_ttin_and_ttou_change_the_worker_count(server):
    y = server("hello:application", workers=1)
    first = y.ready_pids()[0]
    y.signal(signal.SIGTTIN)
    y.wait_log(READY_RE, count=2)
    assert len(y.live_workers()) == 2
    y.signal(signal.SIGTTOU)
    y.wait_log(EXIT_RE)
    wait_until(lambda: len(y.live_workers()) == 1, what="one worker left")
    # The oldest worker is the one retired.
    assert pid_gone(first)
    y.signal(signal.SIGTTOU)  # Never below one.
    y.wait_log(r"Handling signal: ttou", count=2)
    y.wait_log(r"Workers: 1", count=2)
    assert y.get("/")[0] == 200


def test_usr1_reopens_the_access_log(server, tmp_path):
    access = tmp_path / "access.log"
    y = server("--access-logfile", str(access), "hello:application")
    assert y.get("/first")[0] == 200
    wait_until(lambda: access.exists() and "/first" in access.read_text(), what="the access line")
    rotated = tmp_path / "access.log.1"
    access.rename(rotated)
    y.signal(signal.SIGUSR1)
    y.wait_log(r"Handling signal: usr1")

    def reopened():
        y.get("/second")
        return access.exists() and "/second" in access.read_text()
    wait_until(reopened, what="a new access.log")
    assert "/first" in rotated.read_text()


def test_usr1_keeps_a_log_file_it_cannot_reopen(server, tmp_path):
    """The log directory moved away: USR1 says so in the error log, and the
    server goes on serving and logging to the file it has (gunicorn dies)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    y = server("--access-logfile", str(logs / "access.log"), "hello:application")
    moved = tmp_path / "moved"
    logs.rename(moved)
    y.signal(signal.SIGUSR1)
    # The manager's and the worker's.
    y.wait_log(r"Reopen: cannot open log file .*/logs/access\.log, keeping the old one: "
               r"No such file or directory", count=2)
    assert y.get("/after")[0] == 200
    wait_until(lambda: "/after" in (moved / "access.log").read_text(), what="the access line")
    assert y.proc.poll() is None


def test_usr1_reopens_the_error_log(server, tmp_path):
    errlog, rotated = tmp_path / "error.log", tmp_path / "error.log.1"
    y = server("--error-logfile", str(errlog), "hello:application", wait=False)
    wait_until(lambda: errlog.exists() and "Worker ready" in errlog.read_text(), what="a ready worker")
    errlog.rename(rotated)
    y.signal(signal.SIGUSR1)
    # Logged just before the reopen, so it lands in the old file.
    wait_until(lambda: "Handling signal: usr1" in rotated.read_text(), what="USR1 handled")
    y.signal(signal.SIGTERM)
    assert y.wait_exit() == 0
    assert "Shutting down: Master" in errlog.read_text()
    assert "Starting yimmo" in rotated.read_text()
    assert y.stderr == ""


def test_a_killed_worker_is_replaced(server):
    y = server("-w", "2", "hello:application", workers=2)
    victim = y.ready_pids()[0]
    y.signal_worker(victim, signal.SIGKILL)
    y.wait_log(r"Worker \(pid:%d\) was sent SIGKILL!" % victim)
    y.wait_log(READY_RE, count=3)
    assert len(y.live_workers()) == 2 and victim not in y.live_workers()
    assert y.get("/")[0] == 200


def test_a_worker_that_exits_is_replaced(server):
    y = server("hello:application")
    victim = y.ready_pids()[0]
    y.signal_worker(victim, signal.SIGTERM)  # The worker alone drains and exits 0.
    y.wait_log(READY_RE, count=2)
    assert victim not in y.live_workers()
    assert y.get("/")[0] == 200


def test_workers_killed_while_booting_are_replaced_ever_later(server, tmp_path):
    """A worker that dies before it is ready (here SIGKILL while importing the
    app, as an out-of-memory kill would) is replaced after 0.1 s, then 0.2,
    0.4 ...: a crash at start-up must not become a fork loop."""
    (tmp_path / "oom.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    y = server("oom:app", cwd=tmp_path, wait=False)
    found = y.wait_log(r"died before it was ready; the next one starts in ([\d.]+) s", count=4)
    assert [m.group(1) for m in found[:4]] == ["0.1", "0.2", "0.4", "0.8"]
    assert len(y.matches(BOOT_RE)) <= 5 and y.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_stopped_while_it_imports_the_app_is_replaced(server, tmp_path, sig):
    # Sent to that worker alone on the first boot, not by the manager: it
    # stops with status 0, which once read as "the app makes every worker
    # exit" and stopped the server with exit 2.
    mark = tmp_path / "importing"
    (tmp_path / "slow.py").write_text(
        "import os, pathlib, time\n"
        "pathlib.Path(%r).write_text(str(os.getpid()))\n"
        "time.sleep(1.5)\n" % str(mark) + GOOD_APP)
    y = server("slow:application", cwd=tmp_path, wait=False, env={"PYTHONDONTWRITEBYTECODE": "1"})
    wait_until(lambda: mark.exists() and mark.read_text(), what="the worker to import")
    pid = int(mark.read_text())
    with open("/proc/%d/task/%d/children" % (y.proc.pid, y.proc.pid)) as f:
        assert str(pid) in f.read().split()     # this server's worker, still booting
    os.kill(pid, sig)
    y.wait_log(r"died before it was ready; the next one starts in 0.1 s")
    y.wait_ready(workers=1)
    assert y.get("/")[2] == b"v1" and y.proc.poll() is None


def test_a_stuck_worker_is_killed_after_timeout(server, tmp_path):
    mark = str(tmp_path / "mark")
    y = server("-t", "1", "hello:application", env={"YIMMO_TEST_MARK": mark})
    stuck = y.ready_pids()[0]
    t0 = time.monotonic()
    req = in_background(y.get, "/sleep/60")
    _in_flight(mark)
    y.wait_log(r"\[CRITICAL\] WORKER TIMEOUT \(pid:%d\)" % stuck)
    assert 0.9 < time.monotonic() - t0 < 10
    y.wait_log(READY_RE, count=2)
    req["thread"].join(5)
    assert "error" in req  # The stuck request's connection died with its worker.
    assert y.get("/")[0] == 200


def test_threads_let_other_requests_through_a_slow_one(server, tmp_path):
    mark = str(tmp_path / "mark")
    y = server("--threads", "4", "hello:application", env={"YIMMO_TEST_MARK": mark}, wait=False)
    y.wait_log(r"Worker ready|--threads is not supported")
    if "--threads is not supported" in y.stderr:
        pytest.skip("WSGIServer does not accept threads= yet: %s" % y.stderr.splitlines()[-1])
    y.wait_ready(1)
    slow = in_background(y.get, "/sleep/2")
    _in_flight(mark)
    t0 = time.monotonic()
    for _ in range(5):
        assert y.get("/")[0] == 200
    assert time.monotonic() - t0 < 1.5
    assert slow["thread"].is_alive()
    slow["thread"].join(10)
    assert slow["result"][0] == 200


def test_preload_imports_the_app_in_the_manager(server, tmp_path):
    mark = tmp_path / "imports"
    y = server("--preload", "-w", "2", "hello:application", workers=2,
               env={"YIMMO_TEST_IMPORT_MARK": str(mark)})
    assert mark.read_text().split() == [str(y.proc.pid)]


def test_without_preload_each_worker_imports_the_app(server, tmp_path):
    mark = tmp_path / "imports"
    y = server("-w", "2", "hello:application", workers=2, env={"YIMMO_TEST_IMPORT_MARK": str(mark)})
    assert sorted(int(p) for p in mark.read_text().split()) == sorted(y.ready_pids())


# --- Sockets ------------------------------------------------------------------------


def test_unix_socket_is_served_and_removed(server, tmp_path):
    path = str(tmp_path / "y.sock")
    y = server("hello:application", bind="unix:" + path)
    assert y.url == "unix:" + path
    data = unix_request(path, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and b"hello from" in data
    y.signal(signal.SIGTERM)
    assert y.wait_exit() == 0
    assert not os.path.exists(path)


def test_stale_unix_socket_is_replaced_live_one_refused(server, tmp_path):
    path = str(tmp_path / "y.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # The file stays, nobody listens: a crashed server's leftover.
    y = server("hello:application", bind="unix:" + path)
    r = run_cli("-b", "unix:" + path, "hello:application")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "yimmo-wsgi: error: could not bind to unix:%s: another server is listening there" % path)
    y.signal(signal.SIGTERM)
    assert y.wait_exit() == 0


def test_unix_socket_of_a_busy_server_is_refused_at_once(tmp_path):
    # A live server whose backlog is full: the probe's connect would wait;
    # it gives up at once and the socket file is left alone.
    path = str(tmp_path / "busy.sock")
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(path)
    busy.listen(0)
    held = []
    try:
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            try:
                c.connect(path)
            except BlockingIOError:
                c.close()
                break
            held.append(c)
        r = run_cli("-b", "unix:" + path, "hello:application", timeout=10)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines()[-1].endswith("another server is listening there")
        assert os.path.exists(path)
    finally:
        for c in held:
            c.close()
        busy.close()


def test_inherited_fd(server):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    try:
        y = server("hello:application", bind="fd://%d" % lsock.fileno(), pass_fds=(lsock.fileno(),))
        assert y.port == port
        assert y.get("/")[0] == 200
    finally:
        lsock.close()


@pytest.mark.skipif(not HAVE_WSGISERVER, reason="several listeners need the C WSGIServer (sock=[...])")
def test_several_binds(server, tmp_path):
    path = str(tmp_path / "y.sock")
    y = server("-b", "unix:" + path, "hello:application")
    assert re.search(r"Listening at: http://127\.0\.0\.1:\d+,unix:%s " % re.escape(path), y.stderr)
    assert y.get("/")[0] == 200
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.")


def test_ipv6_bind(server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    y = server("hello:application", bind="[::1]:0")
    assert y.url.startswith("http://[::1]:")
    assert y.get("/")[0] == 200


def test_port_env_sets_the_default_bind(server):
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    port = s.getsockname()[1]
    s.close()
    y = server("hello:application", bind=None, env={"PORT": str(port)})
    assert y.url == "http://0.0.0.0:%d" % port


def test_web_concurrency_sets_the_default_workers(server):
    y = server("hello:application", workers=3, env={"WEB_CONCURRENCY": "3"})
    assert len(y.live_workers()) == 3


def test_bind_in_use_is_one_line_exit_1(server):
    y = server("hello:application")
    r = run_cli("-b", "127.0.0.1:%d" % y.port, "hello:application")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "yimmo-wsgi: error: could not bind to 127.0.0.1:%d: Address already in use" % y.port]


def test_reuse_port(server):
    y = server("--reuse-port", "hello:application")
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", y.port))  # Only possible when the server set SO_REUSEPORT too.
    finally:
        s.close()


# --- Code that breaks under a running server ---------------------------------------

GOOD_APP = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"v1"]
'''
BROKEN_APP = "import yimmo_no_such_dependency_after_deploy  # the new code is broken\n"


def _flip_server(server, tmp_path, workers=2, config=False):
    """Workers serving flip.py, GOOD_APP until the test rewrites it; with
    config, their count is in tmp_path/yimmo.toml (which a HUP re-reads),
    not on the command line."""
    (tmp_path / "flip.py").write_text(GOOD_APP)
    if config:
        (tmp_path / "yimmo.toml").write_text("workers = %d\n" % workers)
        args = ("-c", str(tmp_path / "yimmo.toml"))
    else:
        args = ("-w", str(workers))
    return server(*args, "flip:application", cwd=tmp_path, workers=workers,
                  env={"PYTHONDONTWRITEBYTECODE": "1"})


WORKERS_RE = re.compile(r"Workers: (\d+)")


def _kept_count(y):
    """The worker count the manager keeps: a TTIN makes it say its count,
    one more than that. (Counting processes would need a wait for ones that
    never come.)"""
    n = len(y.matches(WORKERS_RE))
    y.signal(signal.SIGTTIN)
    return int(y.wait_log(WORKERS_RE, count=n + 1)[n].group(1)) - 1


def test_hup_with_an_app_that_no_longer_loads_keeps_the_old_workers(server, tmp_path):
    y = _flip_server(server, tmp_path)
    old = sorted(y.ready_pids())
    (tmp_path / "flip.py").write_text(BROKEN_APP)
    y.signal(signal.SIGHUP)
    y.wait_log(r"\[ERROR\] Reload failed, keeping the old workers: .*yimmo_no_such_dependency_after_deploy")
    assert y.get("/")[2] == b"v1"
    assert sorted(y.live_workers()) == old
    assert y.proc.poll() is None
    # A later HUP with fixed code goes through.
    (tmp_path / "flip.py").write_text(GOOD_APP.replace("v1", "v2"))
    y.signal(signal.SIGHUP)
    y.wait_log(READY_RE, count=4)
    wait_until(lambda: all(pid_gone(p) for p in old), what="the old workers to stop")
    assert y.get("/")[2] == b"v2"


def test_a_replacement_that_cannot_load_the_app_stops_the_manager(server, tmp_path):
    y = _flip_server(server, tmp_path, workers=1)
    (tmp_path / "flip.py").write_text(BROKEN_APP)
    y.signal_worker(y.ready_pids()[0], signal.SIGKILL)
    assert y.wait_exit() == 3
    assert y.stderr.splitlines()[-1].startswith(
        "yimmo-wsgi: error: worker failed to boot: error importing 'flip': ModuleNotFoundError")


def test_a_replacement_that_cannot_load_the_app_while_others_serve_is_retried(server, tmp_path):
    # The code on disk broke after the workers started (a deploy without
    # HUP, broken certificate files): the worker that still runs keeps
    # serving, and the replacement is tried again later, not in a loop.
    y = _flip_server(server, tmp_path)
    victim, survivor = y.ready_pids()
    (tmp_path / "flip.py").write_text(BROKEN_APP)
    y.signal_worker(victim, signal.SIGKILL)
    y.wait_log(r"\[ERROR\] Serving with the workers that run; the next one starts in 1.0 s")
    assert y.get("/")[2] == b"v1" and y.live_workers() == [survivor]
    assert y.proc.poll() is None
    (tmp_path / "flip.py").write_text(GOOD_APP.replace("v1", "v2"))
    y.wait_log(READY_RE, count=3)
    assert len(y.live_workers()) == 2


def test_a_refused_reload_leaves_the_old_settings_in_force(server, tmp_path):
    # The refused reload asked for 3 workers: the manager goes on with 2,
    # also when it later replaces one.
    y = _flip_server(server, tmp_path, config=True)
    old = sorted(y.ready_pids())
    (tmp_path / "yimmo.toml").write_text("workers = 3\n")
    (tmp_path / "flip.py").write_text(BROKEN_APP)
    y.signal(signal.SIGHUP)
    y.wait_log(r"Reload failed, keeping the old workers")
    (tmp_path / "flip.py").write_text(GOOD_APP)
    y.signal_worker(old[0], signal.SIGKILL)
    y.wait_log(READY_RE, count=3)
    assert y.get("/")[0] == 200 and y.proc.poll() is None
    assert _kept_count(y) == 2


def test_a_refused_reload_keeps_what_ttin_did(server, tmp_path):
    y = _flip_server(server, tmp_path, workers=1)
    y.signal(signal.SIGTTIN)
    y.wait_log(READY_RE, count=2)
    (tmp_path / "flip.py").write_text(BROKEN_APP)
    y.signal(signal.SIGHUP)
    y.wait_log(r"Reload failed, keeping the old workers")
    assert _kept_count(y) == 2 and y.get("/")[2] == b"v1"


SLOW_APP = "import time\ntime.sleep(2)\n" + GOOD_APP.replace("v1", "v2")


def test_a_second_hup_while_the_first_boots_keeps_the_serving_workers(server, tmp_path):
    # The second HUP overtakes the first one's workers (still importing):
    # they go, the workers that serve stay until the newest are ready, and
    # when the newest cannot load the app those serving workers carry on.
    y = _flip_server(server, tmp_path)
    old = sorted(y.ready_pids())
    (tmp_path / "flip.py").write_text(SLOW_APP)
    y.signal(signal.SIGHUP)
    y.wait_log(BOOT_RE, count=4)
    (tmp_path / "flip.py").write_text(BROKEN_APP)
    y.signal(signal.SIGHUP)
    assert y.get("/", timeout=1)[2] == b"v1"
    y.wait_log(r"Reload failed, keeping the old workers")
    assert y.get("/", timeout=1)[2] == b"v1"
    assert sorted(y.live_workers()) == old and y.proc.poll() is None


def test_two_refused_reloads_that_change_the_count_cancel_out(server, tmp_path):
    # 1 -> 3 workers (still booting), then 3 -> 1 with code that cannot
    # load: both are undone, back to 1 (undoing them one at a time, each
    # kept at least 1, once came to 3).
    y = _flip_server(server, tmp_path, workers=1, config=True)
    conf = tmp_path / "yimmo.toml"
    (tmp_path / "flip.py").write_text(SLOW_APP)
    conf.write_text("workers = 3\n")
    y.signal(signal.SIGHUP)
    y.wait_log(BOOT_RE, count=4)
    (tmp_path / "flip.py").write_text(BROKEN_APP)
    conf.write_text("workers = 1\n")
    y.signal(signal.SIGHUP)
    y.wait_log(r"Reload failed, keeping the old workers")
    assert _kept_count(y) == 1 and y.get("/")[2] == b"v1"


def test_ttou_while_workers_boot_is_not_a_bad_app(server, tmp_path):
    # Booting lines show 2 s into the start (held until then), the
    # workers are ready after 4.
    (tmp_path / "flip.py").write_text(SLOW_APP.replace("sleep(2)", "sleep(4)"))
    y = server("-w", "2", "flip:application", cwd=tmp_path, wait=False,
               env={"PYTHONDONTWRITEBYTECODE": "1"})
    y.wait_log(BOOT_RE, count=2)
    y.signal(signal.SIGTTOU)
    y.wait_ready(workers=1)
    assert y.get("/")[2] == b"v2" and y.proc.poll() is None


def test_new_connections_are_refused_during_the_drain(server, tmp_path):
    # The app holds the loop thread (--threads 0): the listening sockets
    # close at TERM anyway, so a new client is refused, not left in the
    # backlog until the drain ends and then reset.
    mark = str(tmp_path / "mark")
    y = server("--graceful-timeout", "10", "hello:application", env={"YIMMO_TEST_MARK": mark})
    req = in_background(y.get, "/sleep/3")
    _in_flight(mark)
    y.signal(signal.SIGTERM)
    y.wait_log(r"Handling signal: term")

    def refused():
        try:
            socket.create_connection((y.host, y.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False
    wait_until(refused, timeout=2, what="new connections to be refused")
    req["thread"].join(10)
    assert req["result"][0] == 200
    assert y.wait_exit() == 0


def test_workers_stop_when_the_manager_is_killed(server):
    y = server("-w", "2", "hello:application", workers=2)
    pids = y.ready_pids()
    y.signal(signal.SIGKILL)
    wait_until(lambda: all(pid_gone(p) for p in pids), what="the orphaned workers to stop")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((y.host, y.port), timeout=1)


def test_second_int_makes_the_drain_fast(server, tmp_path):
    mark = str(tmp_path / "mark")
    y = server("--graceful-timeout", "30", "hello:application", env={"YIMMO_TEST_MARK": mark})
    req = in_background(y.get, "/sleep/20")
    _in_flight(mark)
    t0 = time.monotonic()
    y.signal(signal.SIGINT)
    y.wait_log(r"Handling signal: int")
    y.signal(signal.SIGINT)
    assert y.wait_exit() == 0
    assert time.monotonic() - t0 < 5
    req["thread"].join(5)
    assert "error" in req


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def _hammer(y, rounds, per_conn=50):
    """rounds connections, each with per_conn pipelined keep-alive requests, all answered."""
    req = b"GET /x?y=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: memtest\r\n\r\n"
    last = req.replace(b"Host: t", b"Host: t\r\nConnection: close")
    for _ in range(rounds):
        data = y.raw(req * (per_conn - 1) + last)
        assert data.count(b"HTTP/1.1 200") == per_conn


def test_worker_memory_stays_flat_over_a_long_run(server, tmp_path):
    # Access log on: the Python side of every request (environ, the log line) runs.
    y = server("--access-logfile", str(tmp_path / "access.log"), "hello:application")
    pid = y.ready_pids()[0]
    _hammer(y, 100)                     # Warm up: caches, arenas, the log file buffer.
    before = _rss_kib(pid)
    _hammer(y, 2000)                    # 100,000 requests on 2,000 connections.
    after = _rss_kib(pid)
    assert after - before < 1024, "worker RSS grew %d KiB over 100,000 requests" % (after - before)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings")
def test_workers_tune_glibc_malloc_unless_the_environment_does(server):
    y = server("hello:application")
    assert y.get("/malloc-tuned")[2] == b"True"
    for env in ({"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}):
        y = server("hello:application", env=env)
        assert y.get("/malloc-tuned")[2] == b"False", env

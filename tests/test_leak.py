"""Nothing grows: refcounts of the heap types, gc-tracked objects, RSS and fds."""
import gc
import logging
import os
import sys

import pytest

import yimmo
from conftest import RawConn, get_request, open_fds, wait_for

PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024


# Under AddressSanitizer freed memory sits in quarantine and valgrind grows
# the heap its own way: RSS says nothing there (scripts/memcheck.sh runs the
# suite so; the sanitizers themselves check for leaks).
rss_meaningful = pytest.mark.skipif(
    bool(os.environ.get("YIMMO_SANITIZED")), reason="RSS is not meaningful under sanitizers")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Snapshot:
    def __init__(self, types):
        gc.collect()
        gc.collect()
        self.refs = {t.__name__: sys.getrefcount(t) for t in types}
        objs = gc.get_objects()
        self.objects = len(objs)
        self.instances = {t.__name__: sum(1 for o in objs if type(o) is t) for t in types}
        del objs
        self.rss = rss()

    def growth(self, later):
        return dict(
            refs={k: later.refs[k] - v for k, v in self.refs.items()},
            instances={k: later.instances[k] - v for k, v in self.instances.items()},
            objects=later.objects - self.objects,
            rss_kib=(later.rss - self.rss) // 1024,
        )


@pytest.fixture
def quiet_yimmo_logger():
    """Handled exceptions are logged; keep those records (and the tracebacks
    they hold) out of pytest's capture, which newer pytest attaches to
    non-propagating loggers too: disable the logger outright."""
    logger = logging.getLogger("yimmo")
    saved = logger.disabled
    logger.disabled = True
    yield
    logger.disabled = saved


def busy_handler(ex):
    h = ex.headers
    h.get("x-n")
    h.getall("x-n")
    h.items()
    len(h)
    "host" in h
    ex.query, ex.remote_addr, ex.version, ex.method
    p = ex.path
    if p == "/body":
        ex.respond(200, {"X-Len": str(len(ex.body))}, ex.body)
    elif p == "/read":
        n = 0
        while True:
            piece = ex.read(100)
            if not piece:
                break
            n += len(piece)
        ex.respond(200, [], str(n))
    elif p == "/stream":
        ex.start(200, [("Content-Type", "text/plain")])
        ex.write(b"a" * 100)
        ex.write(b"b" * 100)
        ex.end()
    elif p == "/raise":
        raise RuntimeError("leak check")
    elif p == "/silent":
        return
    else:
        ex.respond(200, [("Content-Type", "text/plain")], "ok")


PLAN = ["/get", "/body", "/read", "/stream", "/get?x=1"] * 19 + ["/raise"] * 3 + ["/silent"] * 2


def drive(live, count, conns=4):
    """count requests over `conns` keep-alive http.client connections."""
    clients = [live.http() for _ in range(conns)]
    try:
        for i in range(count):
            path = PLAN[i % len(PLAN)]
            c = clients[i % conns]
            if path in ("/body", "/read"):
                c.request("POST", path, body=b"p" * 700, headers={"X-N": str(i)})
            else:
                c.request("GET", path, headers={"X-N": str(i)})
            resp = c.getresponse()
            body = resp.read()
            expected = 500 if path in ("/raise", "/silent") else 200
            assert resp.status == expected, (path, resp.status, body)
    finally:
        for c in clients:
            c.close()
    sync(live)


def sync(live):
    """One more request: the loop has handled every earlier close by the time it answers."""
    with RawConn(live.address) as c:
        c.send(get_request("/get", headers=[("Connection", "close")]))
        assert c.read_response().status == 200
        c.assert_closed()


@pytest.mark.timeout(20)
@rss_meaningful
def test_20000_keepalive_requests_leak_nothing(server, quiet_yimmo_logger):
    ex_type = []

    def handler(ex):
        if not ex_type:
            ex_type.append(type(ex))
        busy_handler(ex)

    live = server(handler)
    drive(live, 2000)  # Warm-up: caches, arenas, the interned strings.
    types = [ex_type[0], yimmo.Headers]
    before = Snapshot(types)
    drive(live, 18000)
    after = Snapshot(types)
    g = before.growth(after)
    assert all(d <= 2 for d in g["refs"].values()), g
    assert all(d <= 0 for d in g["instances"].values()), g
    assert g["objects"] <= 50, g
    assert g["rss_kib"] <= 2048, g  # ~115 bytes a request.


@pytest.mark.timeout(20)
@rss_meaningful
def test_large_bodies_do_not_accumulate(server):
    live = server(lambda ex: ex.respond(200, [], ex.body or b"ok"))
    body = b"L" * (512 * 1024)

    def run(n):
        conn = live.http()
        try:
            for _ in range(n):
                conn.request("POST", "/", body=body)
                assert conn.getresponse().read() == body
        finally:
            conn.close()
        sync(live)

    run(20)
    before = Snapshot([])
    run(200)  # 100 MiB each way.
    after = Snapshot([])
    assert after.rss - before.rss <= 8 * MiB, (before.rss, after.rss)


@pytest.mark.timeout(20)
@rss_meaningful
def test_connection_churn_releases_fds_and_memory(server):
    live = server(lambda ex: ex.respond(200, [], b"x"))

    def churn(n):
        for i in range(n):
            with RawConn(live.address) as c:
                c.send(get_request("/") if i % 3 else b"GET / HTTP/1.1\r\nHost: t\r\n")  # Some leave mid-head.
                if i % 3:
                    c.read_response()

    churn(300)
    fds = open_fds()
    before = Snapshot([])
    churn(3000)
    # Half-open requests are closed by the client; give the loop a moment to see the FINs.
    assert wait_for(lambda: open_fds() <= fds + 2, timeout=2), (fds, open_fds())
    after = Snapshot([])
    assert after.rss - before.rss <= 2 * MiB, (before.rss, after.rss)


def test_dropped_servers_release_their_sockets_and_type_refs():
    def handler(ex):
        ex.respond(200, [], b"")

    def make(n):
        for _ in range(n):
            yimmo.Server(handler, port=0)

    make(10)
    gc.collect()
    fds, refs = open_fds(), sys.getrefcount(yimmo.Server)
    make(500)
    gc.collect()
    assert open_fds() == fds
    assert sys.getrefcount(yimmo.Server) - refs <= 2

"""Persistent connections, HTTP/1.0, pipelining and the idle/head timeouts."""
import socket
import time

import pytest

from conftest import RawConn, get_request


def echo_path(ex):
    ex.respond(200, [("Content-Type", "text/plain")], ex.path)


def echo_body(ex):
    ex.respond(200, [], ex.body)


def test_http11_connection_persists_by_default(server):
    ports = []
    live = server(lambda ex: (ports.append(ex.remote_addr[1]), echo_path(ex)))
    conn = live.http()
    try:
        for i in range(3):
            conn.request("GET", "/r%d" % i)
            resp = conn.getresponse()
            assert resp.read() == b"/r%d" % i
            assert not resp.will_close
    finally:
        conn.close()
    assert len(ports) == 3 and len(set(ports)) == 1


def test_http11_connection_close_closes_after_response(server):
    live = server(echo_path)
    with RawConn(live.address) as c:
        c.send(get_request("/bye", headers=[("Connection", "close")]))
        resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"/bye")
        c.assert_closed()


def test_http10_closes_by_default(server):
    live = server(echo_path)
    with RawConn(live.address) as c:
        c.send(b"GET /old HTTP/1.0\r\n\r\n")
        resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"/old")
        assert not resp.has_token("connection", "keep-alive")
        c.assert_closed()


def test_http10_keep_alive_is_honoured_and_announced(server):
    live = server(echo_path)
    with RawConn(live.address) as c:
        for i in range(3):
            c.send(b"GET /k%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
            resp = c.read_response()
            assert (resp.status, resp.body) == (200, b"/k%d" % i)
            assert resp.has_token("connection", "keep-alive")
            assert resp.header("content-length") == str(len(resp.body))
        c.send(b"GET /last HTTP/1.0\r\n\r\n")
        assert c.read_response().body == b"/last"
        c.assert_closed()


def test_100_pipelined_requests_answered_in_order(server):
    order = []
    live = server(lambda ex: (order.append(ex.path), echo_path(ex)))
    reqs = [get_request("/p%d" % i) for i in range(99)]
    reqs.append(get_request("/p99", headers=[("Connection", "close")]))
    with RawConn(live.address) as c:
        c.send(b"".join(reqs))  # One send() call for all 100.
        bodies = [c.read_response().body for _ in range(100)]
        c.assert_closed()
    expected = [b"/p%d" % i for i in range(100)]
    assert bodies == expected
    assert order == [p.decode() for p in expected]


def test_pipelined_bodies_heads_and_gets_stay_framed(server):
    def handler(ex):
        ex.respond(200, [("X-Path", ex.path)], ex.body or ex.path)

    live = server(handler)
    burst = (b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
             b"HEAD /b HTTP/1.1\r\nHost: t\r\n\r\n"
             b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
             b"GET /d HTTP/1.1\r\nHost: t\r\n\r\n"
             b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    methods = ["POST", "HEAD", "POST", "GET", "POST"]
    with RawConn(live.address) as c:
        c.send(burst)
        rs = [c.read_response(m) for m in methods]
        c.assert_closed()
    assert [r.header("x-path") for r in rs] == ["/a", "/b", "/c", "/d", "/e"]
    assert [r.body for r in rs] == [b"hello", b"", b"abcde", b"/d", b"/e"]
    assert rs[1].header("content-length") == "2"


def test_request_sent_one_byte_at_a_time_is_parsed(server):
    seen = []
    live = server(lambda ex: (seen.append((ex.path, ex.query, ex.headers.items(), ex.body)),
                              echo_body(ex)))
    req = (b"POST /slow/path?q=1 HTTP/1.1\r\nHost: t\r\nX-Long-Name: some value\r\n"
           b"Content-Length: 4\r\n\r\nwxyz")
    with RawConn(live.address) as c:
        for i in range(len(req)):
            c.send(req[i:i + 1])
        resp = c.read_response()
    assert resp.body == b"wxyz"
    assert seen == [("/slow/path", "q=1", [("host", "t"), ("x-long-name", "some value"),
                                           ("content-length", "4")], b"wxyz")]


def test_keepalive_timeout_closes_an_idle_connection(server):
    live = server(echo_path, keepalive_timeout=0.3)
    with RawConn(live.address, timeout=3) as c:
        c.send(get_request("/"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        c.assert_closed()  # Readiness check: blocks until EOF, fails after 3 s.
        idle = time.monotonic() - t0
    assert 0.15 <= idle < 2.5, idle


def test_keepalive_timer_restarts_with_each_request(server):
    live = server(echo_path, keepalive_timeout=0.6)
    with RawConn(live.address) as c:
        start = time.monotonic()
        for i in range(5):
            c.send(get_request("/%d" % i))
            assert c.read_response().body == b"/%d" % i
            # Idle for a third of the timeout: the server must not close meanwhile.
            c.sock.settimeout(0.2)
            with pytest.raises(socket.timeout):
                c.sock.recv(1)
            c.sock.settimeout(5)
        assert time.monotonic() - start > 0.6  # Outlived one whole timeout in total.
        c.send(get_request("/after"))
        assert c.read_response().body == b"/after"


def test_header_timeout_closes_a_partial_head(server):
    calls = []
    live = server(lambda ex: (calls.append(ex.path), echo_path(ex)), header_timeout=0.3)
    with RawConn(live.address, timeout=3) as c:
        c.send(b"GET /never HTTP/1.1\r\nHost: t\r\n")  # No empty line.
        data = c.read_to_eof()  # Fails if the server keeps waiting past 3 s.
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data
    assert calls == []


def test_header_timeout_is_not_reset_by_a_trickling_client(server):
    """Slowloris: one byte every 0.1 s must not keep the head open forever."""
    live = server(echo_path, header_timeout=0.4, keepalive_timeout=5)
    with RawConn(live.address, timeout=3) as c:
        c.send(b"GET / HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 2.5:
            try:
                c.send(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            c.sock.settimeout(0.1)
            try:
                data = c.sock.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data
            closed = True
            break
    assert closed, "connection still open 2.5 s after header_timeout=0.4"


@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize("tail", [b"GET /partial HTTP/1.1\r\nHo", b"POST /p HTTP/1.1\r\nHost: t\r\n"
                                  b"Content-Length: 100\r\n\r\nonly part"], ids=["head", "body"])
def test_answers_queued_before_a_partial_request_and_fin_are_all_sent(server, threads, tail):
    """A client pipelines a request, then half of another, then ends its
    side. The half request is never answered, but the answer before it is,
    whole: it used to be dropped where the server saw the FIN behind the
    half request, with most of it still queued (here all of it is queued at
    once: send_high_water above its size)."""
    body = b"b" * (8 << 20)
    live = server(lambda ex: ex.respond(200, [], body), threads=threads, send_high_water=64 << 20)
    with RawConn(live.address, rcvbuf=4096) as c:
        c.send(get_request("/big") + tail)
        c.sock.shutdown(socket.SHUT_WR)
        assert len(c.read_response().body) == len(body)
        c.assert_closed()

"""Request bodies (Content-Length, chunked, 100-continue) and streamed responses."""
import hashlib
import os
import sys
import threading

import pytest

from conftest import IO_TIMEOUT, RawConn, get_request, wait_for

MiB = 1024 * 1024


def digest(ex):
    body = ex.body
    ex.respond(200, [("X-Len", str(len(body)))], hashlib.sha256(body).hexdigest())


def echo_body(ex):
    ex.respond(200, [], ex.body)


def test_content_length_body_is_in_ex_body(server):
    live = server(echo_body)
    resp, body = live.get("/", method="POST", body=b"a=1&b=2")
    assert (resp.status, body) == (200, b"a=1&b=2")


def test_chunked_request_body_is_decoded(server):
    seen = []
    live = server(lambda ex: (seen.append(ex.body), echo_body(ex)))
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n"
               b"1;name=value\r\n \r\n"      # Chunk extension, ignored.
               b"A\r\n0123456789\r\n"         # Hex size, upper case.
               b"0\r\nX-Trailer: t\r\n\r\n"   # Trailer section.
               b"GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        resp = c.read_response()
        nxt = c.read_response()
        c.assert_closed()
    assert resp.body == b"hello 0123456789"
    assert resp.header("content-length") == "16"
    assert seen == [b"hello 0123456789", b""]
    assert nxt.status == 200


def test_chunked_body_split_across_sends_is_decoded(server):
    live = server(echo_body)
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"4", b"\r\nab", b"cd\r", b"\n3\r\nefg\r\n0", b"\r\n", b"\r\n"):
            c.send(piece)
        assert c.read_response().body == b"abcdefg"


def test_read_streams_the_body_in_bounded_pieces(server):
    pieces = []

    def handler(ex):
        while True:
            p = ex.read(1000)
            pieces.append(p)
            if not p:
                break
        ex.respond(200, [], b"".join(pieces))

    live = server(handler)
    body = os.urandom(100_000)
    resp, got = live.get("/", method="POST", body=body)
    assert got == body
    assert pieces[-1] == b""
    assert all(0 < len(p) <= 1000 for p in pieces[:-1])


def test_read_without_size_returns_the_whole_body_then_empty(server):
    seen = []
    live = server(lambda ex: (seen.append((ex.read(), ex.read())), ex.respond(200, [], b"")))
    live.get("/", method="PUT", body=b"x" * 5000)
    assert seen == [(b"x" * 5000, b"")]


def test_body_exactly_max_body_size_is_accepted(server):
    live = server(digest, max_body_size=1000)
    resp, _ = live.get("/", method="POST", body=b"z" * 1000)
    assert (resp.status, resp.getheader("X-Len")) == (200, "1000")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_max_body_size_is_413(server, chunked):
    calls = []
    live = server(lambda ex: (calls.append(len(ex.body)), ex.respond(200, [], b"")), max_body_size=1000)
    with RawConn(live.address) as c:
        if chunked:
            c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3e8\r\n" + b"z" * 1000 + b"\r\n1\r\nz\r\n0\r\n\r\n")
        else:
            c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n" + b"z" * 1001)
        resp = c.read_response()
    assert resp.status == 413
    assert calls == []


# --- 100-continue -----------------------------------------------------------


def test_100_continue_is_sent_when_the_handler_reads_the_body(server):
    live = server(echo_body)
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c.read_response()  # The body has not been sent yet.
        assert (interim.version, interim.status) == ("HTTP/1.1", 100)
        c.send(b"hello")
        final = c.read_response()
    assert (final.status, final.body) == (200, b"hello")


def test_100_continue_is_sent_on_first_read_call(server):
    def handler(ex):
        first = ex.read(2)
        rest = ex.read()
        ex.respond(200, [], first + b"|" + rest)

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        assert c.read_response().status == 100
        c.send(b"4\r\nabcd\r\n0\r\n\r\n")
        final = c.read_response()
    assert final.body == b"ab|cd"


@pytest.mark.parametrize("status", [413, 401])
def test_no_100_continue_when_handler_answers_without_reading(server, status):
    """On worker threads the handler decides before the body is sent."""
    calls = []
    live = server(lambda ex: (calls.append(ex.path), ex.respond(status, [], b"no")), threads=2)
    with RawConn(live.address) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        resp = c.read_response()
    assert resp.status == status, "first response must be the final one, got %d" % resp.status
    assert calls == ["/upload"]


def test_100_continue_at_once_when_handlers_run_on_the_loop(server):
    """On the loop thread a handler must never wait for the network: the
    body is read first, so 100 Continue goes out at once, and a client that
    then sends nothing holds only its own connection."""
    calls = []
    live = server(lambda ex: (calls.append(ex.path), ex.respond(200, [], ex.body)))
    with RawConn(live.address) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
               b"Expect: 100-continue\r\n\r\n")
        assert c.read_head().status == 100
        assert live.get("/other")[0].status == 200      # the loop is free
        assert calls == ["/other"]
        c.send(b"hello")
        final = c.read_response()
    assert (final.status, final.body) == (200, b"hello")


def test_no_100_continue_without_expect(server):
    live = server(echo_body)
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
        assert c.read_response().status == 200


# --- Streamed responses -----------------------------------------------------


def stream_abc(ex):
    ex.start(200, [("Content-Type", "text/plain")])
    for part in (b"a", b"bc", b"def"):
        ex.write(part)
    ex.end()


def test_streaming_on_http11_is_chunked_and_keeps_the_connection(server):
    live = server(stream_abc)
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        resp = c.read_response()
        assert resp.chunked and resp.header("content-length") is None
        assert resp.body == b"abcdef"
        assert resp.raw_body.endswith(b"0\r\n\r\n")
        c.send(get_request("/", headers=[("Connection", "close")]))
        assert c.read_response().body == b"abcdef"
        c.assert_closed()


def test_streaming_with_content_length_is_not_chunked(server):
    def handler(ex):
        ex.start(200, [("Content-Length", "6")])
        ex.write(b"abc")
        ex.write(b"def")
        ex.end()

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/", headers=[("Connection", "close")]))
        r1, r2 = c.read_response(), c.read_response()
        c.assert_closed()
    assert not r1.chunked and r1.header("transfer-encoding") is None
    assert r1.body == r2.body == b"abcdef"


def test_streaming_empty_write_does_not_end_the_chunked_body(server):
    def handler(ex):
        ex.start(200, [])
        ex.write(b"x")
        ex.write(b"")
        ex.write(b"y")
        ex.end()

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/", headers=[("Connection", "close")]))
        r1 = c.read_response()
        r2 = c.read_response()  # Garbage here if write(b"") emitted the last-chunk.
        c.assert_closed()
    assert r1.body == r2.body == b"xy"


def test_streaming_on_http10_is_close_delimited(server):
    live = server(stream_abc)
    with RawConn(live.address) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        resp = c.read_response()  # No framing header: reads to EOF.
    assert resp.header("transfer-encoding") is None
    assert resp.header("content-length") is None
    assert resp.body == b"abcdef"


def test_streaming_on_http10_keep_alive_still_closes(server):
    """Without a length, HTTP/1.0 can only delimit the body by closing."""
    live = server(stream_abc)
    with RawConn(live.address) as c:
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = c.read_response()
    assert resp.header("transfer-encoding") is None
    assert not resp.has_token("connection", "keep-alive")
    assert resp.body == b"abcdef"


# --- Large bodies -----------------------------------------------------------


def test_8mib_upload_with_content_length(server):
    live = server(digest)
    body = os.urandom(8 * MiB)
    resp, got = live.get("/", method="POST", body=body)
    assert resp.getheader("X-Len") == str(len(body))
    assert got.decode() == hashlib.sha256(body).hexdigest()


def test_8mib_upload_chunked(server):
    live = server(digest)
    body = os.urandom(8 * MiB)
    conn = live.http()
    try:
        conn.request("POST", "/", body=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                     encode_chunked=True)
        resp = conn.getresponse()
        got = resp.read()
    finally:
        conn.close()
    assert resp.getheader("X-Len") == str(len(body))
    assert got.decode() == hashlib.sha256(body).hexdigest()


def test_8mib_upload_read_in_pieces(server):
    def handler(ex):
        h, n = hashlib.sha256(), 0
        while True:
            p = ex.read(65536)
            if not p:
                break
            h.update(p)
            n += len(p)
        ex.respond(200, [("X-Len", str(n))], h.hexdigest())

    live = server(handler)
    body = os.urandom(8 * MiB)
    resp, got = live.get("/", method="POST", body=body)
    assert (resp.getheader("X-Len"), got.decode()) == (str(len(body)), hashlib.sha256(body).hexdigest())


def test_8mib_download_with_respond(server):
    body = os.urandom(8 * MiB)
    live = server(lambda ex: ex.respond(200, [], body))
    resp, got = live.get("/")
    assert resp.getheader("Content-Length") == str(len(body))
    assert got == body


def test_8mib_download_streamed(server):
    body = os.urandom(8 * MiB)

    def handler(ex):
        ex.start(200, [("Content-Type", "application/octet-stream")])
        for i in range(0, len(body), 65536):
            ex.write(body[i:i + 65536])
        ex.end()

    live = server(handler)
    conn = live.http()
    try:
        for _ in range(2):  # Then the connection is still usable.
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.getheader("Transfer-Encoding") == "chunked"
            assert resp.read() == body
    finally:
        conn.close()


# --- Output goes out as the handler makes it ---------------------------------


def test_each_write_reaches_the_client_while_the_handler_goes_on(server):
    """On a worker thread a streamed write() is sent at once, not when the
    handler returns: the client reads each piece before the handler makes
    the next."""
    got_a = threading.Event()

    def handler(ex):
        ex.start(200, [("Content-Type", "text/plain")])
        ex.write(b"a")
        assert got_a.wait(IO_TIMEOUT), "the client never saw the first piece"
        ex.write(b"b")
        ex.end()

    live = server(handler, threads=2)
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        assert c.read_head().status == 200
        assert c.read_line() == b"1" and c.read_exact(3) == b"a\r\n"
        got_a.set()
        assert c.read_line() == b"1" and c.read_exact(3) == b"b\r\n"


def test_respond_on_a_worker_thread_is_sent_before_the_handler_returns(server):
    seen = threading.Event()

    def handler(ex):
        ex.respond(200, [], b"answered")
        seen.wait(3 * IO_TIMEOUT)

    live = server(handler, threads=2)
    with RawConn(live.address, timeout=IO_TIMEOUT) as c:   # shorter than the handler's wait
        c.send(get_request("/"))
        assert c.read_response().body == b"answered"
        seen.set()


def test_a_large_answer_does_not_hold_its_worker_for_a_client_that_does_not_read(server):
    """respond() hands what the socket does not take at once to the loop:
    the only worker is free for the next client at once."""
    big = b"B" * (16 << 20)
    live = server(lambda ex: ex.respond(200, [], big if ex.path == "/big" else b"small"),
                  threads=1, send_timeout=60)
    with RawConn(live.address, rcvbuf=4096) as stuck, RawConn(live.address) as other:
        stuck.send(get_request("/big"))
        assert stuck.read_head().status == 200      # the worker has answered /big
        other.send(get_request("/small"))
        assert other.read_response().body == b"small"


def test_a_started_response_goes_out_before_the_body_is_awaited(server):
    """Expect: 100-continue, and the handler starts its answer before it
    reads the body: no 100 then (RFC 9110 10.1.1), but the head it queued is
    sent before the wait, or a client waiting for either stalls until
    body_timeout."""
    def handler(ex):
        ex.start(200, [("Content-Type", "text/plain")])
        ex.write(ex.read())
        ex.end()

    live = server(handler, threads=2, body_timeout=60)
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert c.read_head().status == 200
        c.send(b"ping")
        assert c.read_line() == b"4" and c.read_exact(6) == b"ping\r\n"


# Where the last bytes of a body are written without the GIL, the loop parks
# its reference: in the flush right after a loop-thread handler (a body that
# fits the socket at once), or in the loop's writes after a worker's own
# (a body larger than the socket takes while the client reads slowly).
@pytest.mark.parametrize("threads, size, rcvbuf", [(0, 64 << 10, None), (2, 4 << 20, 4096)],
                         ids=["loop", "threads"])
def test_a_sent_body_is_let_go_while_the_server_idles(server, threads, size, rcvbuf):
    """The server holds no reference to a body once it is written, also
    when no other request comes (20 MiB bodies would otherwise stay): what
    the loop parked is let go a moment after it goes idle."""
    body = b"x" * size            # referenced, not copied (over 8 KiB)
    base = sys.getrefcount(body)
    live = server(lambda ex: ex.respond(200, [], body), threads=threads)
    with RawConn(live.address, rcvbuf=rcvbuf) as c:
        c.send(get_request("/"))
        assert len(c.read_response().body) == len(body)
        assert wait_for(lambda: sys.getrefcount(body) == base, IO_TIMEOUT), \
            "%d references still held" % (sys.getrefcount(body) - base)

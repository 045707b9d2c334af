"""Handler failures, malformed requests, bad arguments and vanishing clients."""
import logging
import os
import socket

import pytest

import yimmo
from conftest import IO_TIMEOUT, RawConn, get_request, parse_responses, raw_request


def ok(ex):
    ex.respond(200, [], b"ok")


def yimmo_records(caplog):
    return [r for r in caplog.records if r.name == "yimmo" or r.name.startswith("yimmo.")]


def assert_still_serving(live):
    resp, body = live.get("/still-alive")
    assert resp.status == 200, "server stopped serving after the previous client"


# --- Handler failures -------------------------------------------------------


def test_handler_exception_is_500_logged_and_server_keeps_serving(server, caplog):
    def handler(ex):
        if ex.path == "/boom":
            raise ValueError("boom-123")
        ok(ex)

    live = server(handler)
    with caplog.at_level(logging.DEBUG, logger="yimmo"):
        resp, _ = live.get("/boom")
        assert resp.status == 500
        # The loop answered this later request, so it finished logging the first one.
        resp, body = live.get("/fine")
        assert (resp.status, body) == (200, b"ok")
    errors = [r for r in yimmo_records(caplog) if r.exc_info and r.exc_info[0] is ValueError]
    assert len(errors) == 1, caplog.text
    assert errors[0].levelno >= logging.ERROR
    assert "boom-123" in caplog.text


def test_exception_after_start_closes_the_connection(server, caplog):
    def handler(ex):
        if ex.path == "/half":
            ex.start(200, [("Content-Type", "text/plain")])
            ex.write(b"partial")
            raise RuntimeError("mid-stream")
        ok(ex)

    live = server(handler)
    with caplog.at_level(logging.DEBUG, logger="yimmo"):
        with RawConn(live.address) as c:
            c.send(get_request("/half"))
            head = c.read_head()
            assert head.status == 200
            rest = c.read_to_eof()  # Must close: the body cannot be completed.
        assert b"partial" in rest
        assert not rest.endswith(b"0\r\n\r\n"), "a truncated body was framed as complete: %r" % rest
        assert_still_serving(live)
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in yimmo_records(caplog)), caplog.text


def test_handler_returning_without_answer_is_500_and_logged(server, caplog):
    def handler(ex):
        if ex.path == "/silent":
            return None
        ok(ex)

    live = server(handler)
    with caplog.at_level(logging.DEBUG, logger="yimmo"):
        resp, _ = live.get("/silent")
        assert resp.status == 500
        assert_still_serving(live)
    assert yimmo_records(caplog), "no log line for a handler that did not answer"


# --- Malformed requests -----------------------------------------------------

MALFORMED = {
    "header-without-colon": b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "at-sign-in-method": b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "control-char-in-method": b"GE\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",  # RFC 9112 5.1
    "control-char-in-name": b"GET / HTTP/1.1\r\nHost: x\r\nX-\x01: y\r\n\r\n",
    "no-version": b"HELLO\r\n\r\n",
    "bad-protocol-name": b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
    "non-numeric-content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
    "conflicting-content-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                   b"Content-Length: 2\r\n\r\nab",  # RFC 9112 6.3
    "http11-without-host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",  # RFC 9112 3.2
}


@pytest.mark.parametrize("request_bytes", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_request_is_400_and_closed_without_calling_handler(server, request_bytes):
    calls = []
    live = server(lambda ex: (calls.append(ex.path), ok(ex)))
    data = raw_request(live.address, request_bytes)  # Fails unless the server closes.
    (resp,) = parse_responses(data)
    assert resp.status == 400, data
    assert resp.has_token("connection", "close"), data
    assert calls == []
    assert_still_serving(live)


def test_malformed_request_after_a_good_one_in_a_pipeline(server):
    calls = []
    live = server(lambda ex: (calls.append(ex.path), ok(ex)))
    data = raw_request(live.address, get_request("/good") + b"GET /bad HTTP/1.1\r\nNo Colon\r\n\r\n"
                                     + get_request("/never"))
    rs = parse_responses(data)
    assert [r.status for r in rs] == [200, 400], data
    assert calls == ["/good"]


def test_unknown_transfer_coding_is_rejected_and_closed(server):
    calls = []
    live = server(lambda ex: (calls.append(ex.path), ok(ex)))
    data = raw_request(live.address, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc")
    (resp,) = parse_responses(data)
    assert resp.status in (400, 501), data  # RFC 9112 6.3 item 4 / 6.1
    assert calls == []


def test_connect_is_501_and_closed_not_a_tunnel(server):
    """RFC 9110 9.3.6: a 2xx to CONNECT would make the connection a tunnel
    (RFC 9112 6.3), and what follows would be tunnel bytes, not requests."""
    calls = []
    live = server(lambda ex: (calls.append(ex.path), ok(ex)))
    data = raw_request(live.address, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                                     + get_request("/tunnel-bytes"))
    (resp,) = parse_responses(data)
    assert resp.status == 501 and resp.has_token("connection", "close"), data
    assert calls == []
    assert_still_serving(live)


def test_content_length_with_chunked_is_never_kept_alive(server):
    """Smuggling guard (RFC 9112 6.3 item 3): reject, or use chunked and close."""
    bodies = []
    live = server(lambda ex: (bodies.append(ex.body), ok(ex)))
    data = raw_request(live.address, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n"
                                     b"3\r\nabc\r\n0\r\n\r\n" + get_request("/smuggled"))
    rs = parse_responses(data)
    assert len(rs) == 1, data
    assert rs[0].status == 400 or bodies == [b"abc"], (data, bodies)


def test_overlong_header_line_is_431(server):
    live = server(ok)
    data = raw_request(live.address, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 431, data[:200]


def test_overlong_request_target_is_414(server):
    live = server(ok)
    data = raw_request(live.address, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 414, data[:200]


# --- Bad arguments ----------------------------------------------------------


def test_exchange_and_headers_cannot_be_constructed():
    with pytest.raises(TypeError):
        yimmo.Exchange()
    with pytest.raises(TypeError):
        yimmo.Headers()


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(handler=5), TypeError, "handler"),
    (dict(port=-1), ValueError, "port"),
    (dict(port=65536), ValueError, "port"),
    (dict(port="80"), TypeError, "port"),
    (dict(host=5), TypeError, "host"),
    (dict(backlog=-1), ValueError, "backlog"),
    (dict(keepalive_timeout=-1.0), ValueError, "keepalive_timeout"),
    (dict(keepalive_timeout="5"), TypeError, "keepalive_timeout"),
    (dict(keepalive_timeout=True), TypeError, "keepalive_timeout"),
    (dict(busy_poll=False), TypeError, "busy_poll"),
    (dict(ws_ping_interval=False), TypeError, "ws_ping_interval"),
    (dict(header_timeout=-1.0), ValueError, "header_timeout"),
    (dict(max_body_size=-1), ValueError, "max_body_size"),
    (dict(sock="not a socket"), TypeError, "sock"),
    (dict(port=2**70), ValueError, "port"),
    (dict(host="127.0.0.1\0junk"), ValueError, "host"),
    (dict(sock=-5), ValueError, "fd -5"),
    (dict(sock=2**70), ValueError, "sock"),
    (dict(sock=999999), ValueError, "sock must be an open socket (fd 999999 is not open)"),
    (dict(threads=2**70), ValueError, "threads"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_server_argument_names_the_argument(kwargs, exc, name):
    kwargs = dict(kwargs)
    handler = kwargs.pop("handler", ok)
    kwargs.setdefault("port", 0)
    with pytest.raises(exc) as info:
        yimmo.Server(handler, **kwargs)
    assert name in str(info.value)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX])
def test_an_unbound_socket_is_refused(family):
    """listen() would bind it to a random port on every interface."""
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:     # a kernel without IPv6
        pytest.skip("no %s sockets here: %s" % (family.name, e))
    with s, pytest.raises(ValueError, match="sock must be bound"):
        yimmo.Server(ok, sock=s)


def test_the_worker_thread_body_outside_run_returns():
    """_work() is what run() starts its worker threads with; called on its
    own it once waited forever for requests that never came."""
    import threading
    for threads in (0, 2):
        srv = yimmo.Server(ok, port=0, threads=threads)
        t = threading.Thread(target=srv._work, daemon=True)    # fails, not hangs, if it waits
        t.start()
        t.join(IO_TIMEOUT)
        assert not t.is_alive(), "_work() still waiting outside run()"


def test_binding_an_address_in_use_is_oserror_naming_it():
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(OSError) as info:
            yimmo.Server(ok, host="127.0.0.1", port=port)
        assert str(port) in str(info.value)
        assert "127.0.0.1" in str(info.value)
    finally:
        holder.close()


@pytest.mark.parametrize("call, exc, name", [
    (lambda ex: ex.respond(99, [], b""), ValueError, "status"),
    (lambda ex: ex.respond(1000, [], b""), ValueError, "status"),
    (lambda ex: ex.respond("200", [], b""), TypeError, "status"),
    (lambda ex: ex.respond(200, 5, b""), TypeError, "headers"),
    (lambda ex: ex.respond(200, [], 5), TypeError, "body"),
    (lambda ex: ex.respond(200, [("X-A", "a\r\nInjected: 1")], b""), ValueError, None),
    (lambda ex: ex.respond(200, [("Bad Name", "v")], b""), ValueError, None),
    (lambda ex: ex.start(99, []), ValueError, "status"),
    (lambda ex: ex.respond(2**70, [], b""), ValueError, "status"),
    (lambda ex: ex.respond(200, [("Content-Length", "10")], b"abc"), ValueError, "Content-Length"),
    (lambda ex: ex.respond(200, [("Content-Length", "1")], b"abc"), ValueError, "Content-Length"),
], ids=["status-99", "status-1000", "status-str", "headers-int", "body-int",
        "crlf-in-value", "space-in-name", "start-status-99", "status-2**70", "length-over-body",
        "length-under-body"])
def test_bad_respond_argument_raises_and_sends_nothing(server, call, exc, name):
    raised = []

    def handler(ex):
        try:
            call(ex)
        except Exception as e:
            raised.append(e)
        ok(ex)  # The failed call must have left the exchange unanswered.

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(get_request("/", headers=[("Connection", "close")]))
        resp = c.read_response()
        c.assert_closed()
    assert (resp.status, resp.body) == (200, b"ok")
    assert b"Injected" not in repr(resp.headers).encode()
    assert len(raised) == 1 and isinstance(raised[0], exc), raised
    if name:
        assert name in str(raised[0])


@pytest.mark.parametrize("threads", [0, 2], ids=["loop", "threads"])
def test_an_exchange_used_from_another_thread_is_a_runtime_error(server, threads):
    """Only the thread running the handler may touch its exchange: another
    writing while the handler waited on a slow client once put a second
    response head inside the first's body."""
    import threading
    errors = []

    def handler(ex):
        def other():
            for call in (lambda: ex.write(b"x"), lambda: ex.respond(200), lambda: ex.query,
                         ex.end):
                try:
                    call()
                except RuntimeError as e:
                    errors.append(str(e))
        ex.start(200, [("Content-Type", "text/plain")])
        t = threading.Thread(target=other)
        t.start()
        t.join()
        ex.write(b"mine")
        ex.end()

    live = server(handler, threads=threads)
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        assert c.read_response().body == b"mine"
    assert len(errors) == 4 and all("thread that runs its handler" in e for e in errors), errors


# --- Vanishing clients ------------------------------------------------------


def test_client_gone_mid_head(server):
    live = server(ok)
    with RawConn(live.address) as c:
        c.send(b"GET / HTTP/1.1\r\nHo")
    assert_still_serving(live)


def test_client_gone_mid_body_upload(server):
    live = server(lambda ex: ex.respond(200, [], b"%d" % len(ex.body)))
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    assert_still_serving(live)


def test_client_reset_before_reading_the_response(server):
    live = server(ok)
    c = RawConn(live.address)
    c.send(get_request("/"))
    c.reset()
    assert_still_serving(live)


def test_client_reset_mid_large_response(server):
    big = os.urandom(8 * 1024 * 1024)
    live = server(lambda ex: ex.respond(200, [], big) if ex.path == "/big" else ok(ex))
    c = RawConn(live.address, rcvbuf=65536)
    c.send(get_request("/big"))
    assert c.fill()
    c.reset()
    assert_still_serving(live)


def test_client_reset_mid_streamed_response(server, caplog):
    chunk = b"s" * 65536

    def handler(ex):
        if ex.path == "/stream":
            ex.start(200, [])
            for _ in range(200):
                ex.write(chunk)
            ex.end()
        else:
            ok(ex)

    live = server(handler)
    with caplog.at_level(logging.CRITICAL, logger="yimmo"):  # A failed write may be logged.
        c = RawConn(live.address, rcvbuf=65536)
        c.send(get_request("/stream"))
        assert c.fill()
        c.reset()
        assert_still_serving(live)
        assert_still_serving(live)


def test_stop_timeout_is_a_number_not_a_bool():
    srv = yimmo.Server(ok, port=0)
    with pytest.raises(TypeError, match="timeout must be a number"):
        srv.stop(True)
    srv.stop()

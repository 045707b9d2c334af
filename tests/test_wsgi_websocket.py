"""WebSockets from a WSGI application: environ["yimmo.websocket"], accept(),
and the blocking receive()/send()/close() on a worker thread, with the
`websockets` library as the client (docs/websockets.md, "From a WSGI app")."""
import struct
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import IO_TIMEOUT, RawConn, wait_for
from test_websocket import CLOSE, CONT, PING, PONG, TEXT, frame, read_frame, upgrade_request
from wsgi_conftest import wsgi_server  # noqa: F401  (fixture)

# WebSockets from WSGI need worker threads: every test once, with two (not
# again as the fixture's loop-thread variant, which would be the same).
pytestmark = pytest.mark.parametrize("wsgi_server", [2], indirect=True, ids=["threads"])


def ws_app(handler):
    """A WSGI app that accepts the WebSocket and runs handler(ws) on it."""
    def app(environ, start_response):
        ws = environ.get("yimmo.websocket")
        if ws is None:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"plain\n"]
        ws.accept()
        handler(ws)
        return []
    return app


def serve_live(wsgi_server, handler, **kw):  # noqa: F811
    live = wsgi_server(ws_app(handler), validate=False, expect_errors=True, **kw)
    return live, "ws://127.0.0.1:%d/" % live.port


def serve(wsgi_server, handler, **kw):  # noqa: F811
    return serve_live(wsgi_server, handler, **kw)[1]


def test_echo(wsgi_server):  # noqa: F811
    def echo(ws):
        while (msg := ws.receive()) is not None:
            ws.send(msg)

    with connect(serve(wsgi_server, echo)) as c:
        for m in ["text", b"\x00binary", "κόσμε" * 1000, b""]:
            c.send(m)
            assert c.recv(timeout=IO_TIMEOUT) == m


def test_fragments_sent_with_fin_false_make_one_message(wsgi_server):  # noqa: F811
    def fragments(ws):
        ws.receive()
        ws.send("a", fin=False)
        ws.send("b", fin=False)
        ws.send("c")
        ws.send(b"next")        # a new message after the last fragment
        ws.receive()

    with connect(serve(wsgi_server, fragments)) as c:
        c.send("go")
        assert c.recv(timeout=IO_TIMEOUT) == "abc"
        assert c.recv(timeout=IO_TIMEOUT) == b"next"


@pytest.mark.parametrize("how, code", [("return", 1000), ("raise", 1011)])
def test_a_handler_that_ends_closes_with_a_close_frame(wsgi_server, how, code):  # noqa: F811
    """RFC 6455 7.1.1, 7.4.1: never a bare TCP close (1006 at the client)."""
    def ends(ws):
        ws.receive()
        if how == "raise":
            raise RuntimeError("the handler failed")

    with connect(serve(wsgi_server, ends)) as c:
        c.send("x")
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=IO_TIMEOUT)
        assert c.close_code == code


def test_send_over_the_limit_is_a_buffer_error(wsgi_server):  # noqa: F811
    seen = []

    def big(ws):
        ws.receive()
        try:
            ws.send(b"x" * 5000)
        except Exception as e:
            seen.append(type(e))
        ws.send("after")
        ws.receive()

    with connect(serve(wsgi_server, big, ws_send_limit=1000)) as c:
        c.send("go")
        assert c.recv(timeout=IO_TIMEOUT) == "after"
    assert seen == [BufferError]


def test_ping_between_fragments(wsgi_server):  # noqa: F811
    """RFC 6455 5.4: a control frame may come between the fragments of a message."""
    def pings(ws):
        ws.receive()
        ws.send("a", fin=False)
        ws.ping(payload=b"p1")
        ws.send("b")
        with pytest.raises(ValueError):
            ws.ping(b"x" * 126)
        ws.receive()

    url = serve(wsgi_server, pings)
    with RawConn(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))) as c:
        c.send(upgrade_request("/"))
        assert c.read_head().status == 101
        c.send(frame(TEXT, b"go"))
        assert [read_frame(c) for _ in range(3)] == [
            (0, 0, TEXT, b"a"), (1, 0, PING, b"p1"), (1, 0, CONT, b"b")]


@pytest.mark.parametrize("extra, status, why", [
    ([("Sec-WebSocket-Version", "12")], 426, "Sec-WebSocket-Version: 13 only"),
    ([("Sec-WebSocket-Key", "short")], 400, "malformed Sec-WebSocket-Key"),
    ([("Sec-WebSocket-Extensions", "permessage-deflate x")], 400, "malformed Sec-WebSocket-Extensions"),
])
@pytest.mark.parametrize("app_answers", [True, False], ids=["answered", "uncaught"])
def test_accept_on_a_bad_handshake_names_the_status(wsgi_server, extra, status, why, app_answers):  # noqa: F811
    """accept() on a handshake that is not valid raises ValueError naming the
    status and why, and sends nothing: the application answers (uncaught,
    its one 500), so there is exactly one response."""
    seen = []

    def app(environ, start_response):
        try:
            environ["yimmo.websocket"].accept()
        except ValueError as e:
            seen.append(str(e))
            if not app_answers:
                raise
            code = int(str(e).split("(HTTP ")[1][:3])
            start_response("%d Refused" % code, [("Content-Type", "text/plain")]
                           + ([("Sec-WebSocket-Version", "13")] if code == 426 else []))
            return [b"refused\n"]
        return []

    live = wsgi_server(app, validate=False, expect_errors=not app_answers)
    version = [v for k, v in extra if k == "Sec-WebSocket-Version"]
    key = [v for k, v in extra if k == "Sec-WebSocket-Key"]
    ext = [(k, v) for k, v in extra if k == "Sec-WebSocket-Extensions"]
    with RawConn(("127.0.0.1", live.port)) as c:
        c.send(upgrade_request("/", version=version[0] if version else "13",
                               key=key[0] if key else "dGhlIHNhbXBsZSBub25jZQ==", extra=ext)
               + upgrade_request("/", key="short"))
        resp = c.read_response()
        assert resp.status == (status if app_answers else 500), resp
        assert c.read_response().status == (400 if app_answers else 500)   # the next request, as usual
    assert seen[0] == "not a valid WebSocket handshake (HTTP %d: %s)" % (status, why)


@pytest.mark.parametrize("offer, chosen, ok", [(["a", "b"], "b", True), (["a"], "chat", False),
                                              (None, "chat", False)])
def test_accept_takes_only_an_offered_subprotocol(wsgi_server, offer, chosen, ok):  # noqa: F811
    """RFC 6455 4.2.2: the server picks one of the client's, or none."""
    seen = []

    def app(environ, start_response):
        ws = environ["yimmo.websocket"]
        try:
            ws.accept(subprotocol=chosen)
        except ValueError as e:
            seen.append(e)
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"no such subprotocol\n"]
        seen.append(None)
        ws.receive()
        return []

    live = wsgi_server(app, validate=False)
    url = "ws://127.0.0.1:%d/" % live.port
    if ok:
        with connect(url, subprotocols=offer) as c:
            assert c.subprotocol == chosen
        assert seen == [None]
    else:
        with pytest.raises(InvalidStatus) as ei:
            connect(url, subprotocols=offer, open_timeout=IO_TIMEOUT)
        assert ei.value.response.status_code == 400
        assert "was not offered" in str(seen[0])


def test_stop_says_going_away(wsgi_server):  # noqa: F811
    """RFC 6455 7.4.1: a server shutting down closes with 1001, then lets
    the client answer, rather than cutting the connection at the deadline."""
    ended = []

    def waits(ws):
        ws.send("ready")
        ended.append(ws.receive())      # None once closed
        ended.append(ws.close_code)

    live, url = serve_live(wsgi_server, waits)
    with connect(url) as c:
        assert c.recv(timeout=IO_TIMEOUT) == "ready"
        t0 = time.monotonic()
        live.srv.stop(10)
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=IO_TIMEOUT)
        assert (c.close_code, c.close_reason) == (1001, "server shutting down")
        assert time.monotonic() - t0 < 5, "the close came at the stop deadline"
    assert wait_for(lambda: len(ended) == 2) and ended == [None, 1001]


def test_keepalive_pings_under_wsgi(wsgi_server):  # noqa: F811
    """ws_ping_interval / ws_ping_timeout apply to receive() as on the loop:
    a peer that answers stays, one that does not gets 1001 "ping timeout"."""
    ended = []

    def waits(ws):
        ended.append(ws.receive())
        ended.append(ws.close_code)

    live, url = serve_live(wsgi_server, waits, ws_ping_interval=0.2, ws_ping_timeout=0.3)
    with RawConn(("127.0.0.1", live.port)) as c:
        c.send(upgrade_request("/"))
        assert c.read_head().status == 101
        t0 = time.monotonic()
        assert read_frame(c)[2] == PING
        c.send(frame(PONG, b"yimmo"))                   # answered: the connection stays
        assert read_frame(c)[2] == PING                 # the next one, an interval later
        assert read_frame(c) == (1, 0, CLOSE, struct.pack("!H", 1001) + b"ping timeout")
        assert time.monotonic() - t0 < 3
    assert wait_for(lambda: len(ended) == 2) and ended == [None, 1001]


def test_stop_with_a_peer_that_never_answers_the_close(wsgi_server):  # noqa: F811
    """The 1001 goes out; a peer that never answers gets 5 s, as on the
    loop, then receive() ends (1006), well before the idle timeout."""
    ended = []

    def waits(ws):
        ws.send("ready")
        ended.append(ws.receive())
        ended.append(ws.close_code)

    live, url = serve_live(wsgi_server, waits, ws_idle_timeout=60)
    with RawConn(("127.0.0.1", live.port), timeout=15) as c:
        c.send(upgrade_request("/"))
        assert c.read_head().status == 101
        assert read_frame(c) == (1, 0, TEXT, b"ready")
        t0 = time.monotonic()
        live.srv.stop(30)
        assert read_frame(c) == (1, 0, CLOSE, struct.pack("!H", 1001) + b"server shutting down")
        assert wait_for(lambda: len(ended) == 2, 15) and ended == [None, 1006]
        assert 4 < time.monotonic() - t0 < 8


def test_send_to_a_client_that_never_reads_gives_up_after_the_send_timeout(wsgi_server):  # noqa: F811
    """A send() the client does not read fails after send_timeout without
    progress, like an HTTP response, and the connection closes: the thread
    is not held until ws_idle_timeout (300 s by default)."""
    outcome = []

    def flood(ws):
        started = time.monotonic()
        try:
            for _ in range(100000):
                ws.send(b"y" * 65536)
            outcome.append("sent everything")
        except ConnectionError as e:
            outcome.append((time.monotonic() - started, str(e)))

    live, url = serve_live(wsgi_server, flood, send_timeout=0.5, ws_idle_timeout=60)
    with RawConn(live.address, rcvbuf=4096) as c:
        c.send(upgrade_request("/"))
        assert c.read_head().status == 101
        assert wait_for(lambda: outcome, timeout=IO_TIMEOUT), "send() never gave up"
        elapsed, message = outcome[0]
        assert elapsed < 10 and "timed out" in message, outcome
    assert live.request("GET", "/")[1] == b"plain\n"      # the thread serves again


def test_the_websocket_is_its_handlers_thread_only(wsgi_server):  # noqa: F811
    """Two threads in one connection (a send() beside the handler's
    receive(), a receive() left running past the handler) shared its
    buffers unlocked, or used it after it went back to the loop: frames of
    stale memory went out, later clients lost their handshakes. Another
    thread gets RuntimeError, and the connection goes on."""
    import threading
    seen = []

    def handler(ws):
        def other():
            for call in (lambda: ws.send("from elsewhere"), ws.receive, ws.close,
                         lambda: ws.ping(b"x")):
                try:
                    call()
                except RuntimeError as e:
                    seen.append(str(e))
        t = threading.Thread(target=other)
        t.start()
        t.join()
        ws.send("mine")
        ws.receive()

    with connect(serve(wsgi_server, handler)) as c:
        assert c.recv(timeout=IO_TIMEOUT) == "mine"
        c.send("bye")
    assert len(seen) == 4 and all("thread that runs the application only" in s for s in seen), seen

"""WebSockets on yimmo.Server, over real sockets (RFC 6455, RFC 7692).

The `websockets` library is the client for everything a well-behaved peer
does (echo, fragments, ping/pong, close codes, subprotocols, refusals,
concurrency, large messages, permessage-deflate); raw sockets send the
malformed frames and assert the exact close frame the server answers with,
and that the TCP connection then closes. Codec rules byte by byte are in
tests/test_ws_frames.py.

The permessage-deflate tests skip only while the server's 101 carries no
Sec-WebSocket-Extensions answer (the deflate stub declines every offer).
"""
import asyncio
import base64
import hashlib
import os
import resource
import socket
import struct
import threading
import time
import zlib

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import yimmo
from conftest import IO_TIMEOUT, RawConn, wait_for

MiB = 1024 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# ---------------------------------------------------------------------------
# Handlers


class Recorder:
    """Echoes every message and records every callback, thread-safely."""

    def __init__(self, subprotocol=None, refuse=None):
        self.events = []
        self.lock = threading.Lock()
        self.subprotocol = subprotocol
        self.refuse = refuse
        self.sockets = []

    def _add(self, *ev):
        with self.lock:
            self.events.append(ev)

    def on_connect(self, ws):
        self._add("connect", ws.path, ws.query, list(ws.subprotocols))
        if self.refuse is not None:
            return self.refuse
        if self.subprotocol is not None and self.subprotocol in ws.subprotocols:
            return self.subprotocol
        return None

    def on_open(self, ws):
        self.sockets.append(ws)
        self._add("open", ws.subprotocol)

    def on_message(self, ws, msg):
        self._add("message", msg.is_text, len(msg))
        ws.send(msg.text if msg.is_text else msg.data)

    def on_close(self, ws, code, reason):
        self._add("close", code, reason, ws.closed)

    def closes(self):
        with self.lock:
            return [e[1:3] for e in self.events if e[0] == "close"]

    def count(self, kind):
        with self.lock:
            return sum(1 for e in self.events if e[0] == kind)

    def wait_closes(self, n=1, timeout=IO_TIMEOUT):
        assert wait_for(lambda: len(self.closes()) >= n, timeout), \
            "on_close called %d times, expected %d: %r" % (len(self.closes()), n, self.events)
        time.sleep(0.05)  # and no more than that
        return self.closes()


def page(ex):
    ex.respond(200, [("Content-Type", "text/plain")], b"plain http\n")


@pytest.fixture
def ws_server(server):
    """ws_server(handler, path="/ws", **kw) -> (LiveServer, "ws://host:port/path")."""

    def start(handler, path="/ws", **kw):
        live = server(page, websocket={path: handler}, **kw)
        return live, "ws://%s:%d%s" % (live.host, live.port, path)

    return start


# ---------------------------------------------------------------------------
# Raw sockets


def mask_payload(payload, mask):
    return bytes(c ^ mask[i & 3] for i, c in enumerate(payload))


def frame(opcode, payload=b"", fin=True, rsv=0, mask=b"\x12\x34\x56\x78", length=None, ext=None):
    """One client frame (masked unless mask=None). rsv: 4 = RSV1."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    m = 0x80 if mask else 0
    if ext == 16 or (ext is None and 126 <= n < 65536):
        head = bytes([b0, 126 | m]) + struct.pack("!H", n)
    elif ext == 64 or (ext is None and n >= 65536):
        head = bytes([b0, 127 | m]) + struct.pack("!Q", n)
    else:
        head = bytes([b0, n | m])
    if mask:
        return head + mask + mask_payload(payload, mask)
    return head + payload


def close_frame(code=None, reason=b""):
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


def upgrade_request(path="/ws", key=KEY, version="13", extra=(), method="GET",
                    http="HTTP/1.1", connection="Upgrade", upgrade="websocket"):
    lines = ["%s %s %s" % (method, path, http), "Host: test"]
    if upgrade is not None:
        lines.append("Upgrade: " + upgrade)
    if connection is not None:
        lines.append("Connection: " + connection)
    if key is not None:
        lines.append("Sec-WebSocket-Key: " + key)
    if version is not None:
        lines.append("Sec-WebSocket-Version: " + version)
    lines += ["%s: %s" % h for h in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_frame(conn):
    """The next server frame: (fin, rsv, opcode, payload). Server frames are unmasked."""
    b0, b1 = conn.read_exact(2)
    assert not b1 & 0x80, "server frames must not be masked (RFC 6455 5.1)"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", conn.read_exact(2))[0]
        assert n >= 126, "non-minimal length from the server"
    elif n == 127:
        n = struct.unpack("!Q", conn.read_exact(8))[0]
        assert n >= 65536, "non-minimal length from the server"
    return b0 >> 7, (b0 >> 4) & 7, b0 & 0x0F, conn.read_exact(n)


def read_message(conn):
    """Frames until a whole data message (pongs skipped): (opcode, payload, frames)."""
    parts, frames = [], []
    while True:
        fin, rsv, op, payload = read_frame(conn)
        if op in (PING, PONG):
            continue
        frames.append((fin, op))
        parts.append(payload)
        if op == CLOSE:
            return op, payload, frames
        if fin:
            return frames[0][1], b"".join(parts), frames


def open_raw(live, path="/ws", extra=(), first=b""):
    """A RawConn with the handshake done (first: bytes sent in the same packet)."""
    conn = live.connect()
    conn.send(upgrade_request(path, extra=extra) + first)
    resp = conn.read_head()
    assert resp.status == 101, resp
    return conn, resp


def expect_close(conn, code):
    """The server's next frames end with a close frame carrying code; then the
    TCP connection closes. Data frames before it are allowed (echoes)."""
    while True:
        fin, rsv, op, payload = read_frame(conn)
        if op == CLOSE:
            break
    assert fin == 1 and rsv == 0
    got = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    assert got == code, "server closed with %d (%r), expected %d" % (got, payload[2:], code)
    payload[2:].decode("utf-8")  # the reason is valid UTF-8
    conn.assert_closed()
    return payload[2:]


# ---------------------------------------------------------------------------
# Echo, messages, fragments


class Greeter(Recorder):
    """Sends, pings and maybe closes from on_open: the connection speaks
    WebSocket by then (once, it still ran HTTP there and the process died)."""

    def __init__(self, close=False):
        super().__init__()
        self.close = close

    def on_open(self, ws):
        super().on_open(ws)
        ws.send("welcome")
        ws.ping(payload=b"p")
        if self.close:
            ws.close(4002, "go away")


@pytest.mark.parametrize("close", [False, True], ids=["send", "send and close"])
def test_send_and_close_from_on_open(ws_server, close):
    rec = Greeter(close)
    live, url = ws_server(rec)
    # A frame right behind the handshake still comes after on_open.
    conn, _ = open_raw(live, path="/ws", first=frame(TEXT, b"early"))
    assert read_frame(conn) == (1, 0, TEXT, b"welcome")
    assert read_frame(conn)[2] == PING
    if close:
        assert read_frame(conn) == (1, 0, CLOSE, struct.pack("!H", 4002) + b"go away")
        conn.send(frame(CLOSE, struct.pack("!H", 4002)))    # the handshake's second half
        conn.assert_closed()
    else:
        assert read_frame(conn) == (1, 0, TEXT, b"early")
        conn.close()
    rec.wait_closes(1)
    assert [e[0] for e in rec.events][:2] == ["connect", "open"]


def test_a_websocket_kept_after_its_server_is_gone():
    """The WebSocket object outlives its connection and its Server: its
    methods then say it is closed, and never touch the freed server (once,
    close() read it; ASan saw the use after free)."""
    import gc

    from conftest import LiveServer, wait_accepting
    rec = Recorder()
    live = LiveServer(yimmo.Server(lambda ex: ex.respond(200), port=0, websocket={"/ws": rec}))
    live.thread.start()
    wait_accepting(live)
    with connect("ws://%s:%d/ws" % (live.host, live.port)) as c:
        c.send("hi")
        assert c.recv(timeout=IO_TIMEOUT) == "hi"
    rec.wait_closes(1)
    live.stop_and_wait()
    ws = rec.sockets[0]
    del live
    gc.collect()
    assert ws.closed
    assert ws.close() is None and ws.close(1001, "bye") is None
    with pytest.raises(ConnectionError, match="closed"):
        ws.send("late")
    with pytest.raises(ConnectionError, match="closed"):
        ws.ping()
    assert ws.path == "/ws"


def test_echo_text_and_binary(ws_server):
    rec = Recorder()
    live, url = ws_server(rec)
    with connect(url, max_size=None) as c:
        for msg in ["", "hello", "héllo wörld €\U0001F600", "x" * 125, "y" * 126, "z" * 65536]:
            c.send(msg)
            assert c.recv(timeout=IO_TIMEOUT) == msg
        for msg in [b"", b"\x00\xff", bytes(range(256)) * 300, os.urandom(1 << 20)]:
            c.send(msg)
            assert c.recv(timeout=IO_TIMEOUT) == msg
    assert rec.wait_closes() == [(1000, "")]
    assert rec.count("open") == 1


def _message_handler():
    got = {}

    class H:
        def on_message(self, ws, msg):
            view = memoryview(msg)
            got.setdefault("items", []).append(
                (msg.is_text, msg.is_binary, len(msg), bytes(msg), msg.data, view.tobytes(),
                 view.readonly, msg.text if msg.is_text else None, type(msg).__name__))
            got.setdefault("views", []).append(view)  # outlives the callback
            ws.send(b"ok")

    return H, got


def test_message_api(ws_server):
    H, got = _message_handler()
    live, url = ws_server(H())
    with connect(url) as c:
        c.send("κόσμε")
        assert c.recv(timeout=IO_TIMEOUT) == b"ok"
        c.send(b"\x00\x01\xff")
        assert c.recv(timeout=IO_TIMEOUT) == b"ok"
    k = "κόσμε".encode()
    assert got["items"][0] == (True, False, len(k), k, k, k, True, "κόσμε", "WSMessage")
    assert got["items"][1] == (False, True, 3, b"\x00\x01\xff", b"\x00\x01\xff", b"\x00\x01\xff",
                               True, None, "WSMessage")
    assert [v.tobytes() for v in got["views"]] == [k, b"\x00\x01\xff"]
    with pytest.raises(TypeError):
        yimmo.WSMessage()


def test_payload_in_pieces_is_unmasked_at_every_key_phase(ws_server):
    """Pieces of a masked frame's payload arriving apart resume unmasking
    mid-key: every phase of the 4-byte key, inside and across 16-byte blocks."""
    live, url = ws_server(Recorder())
    conn, _ = open_raw(live)
    payload = bytes(range(256)) + os.urandom(300)
    data = frame(BINARY, payload, mask=b"\xa1\xb2\xc3\xd4")
    head = len(data) - len(payload)
    cuts = [head + 1, head + 3, head + 6, head + 22, head + 87, head + 153, head + 154,
            head + 300, len(data)]
    with conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        at = 0
        for cut in cuts:
            conn.send(data[at:cut])
            at = cut
            time.sleep(0.002)  # pacing, so that the server reads the pieces apart
        assert read_frame(conn) == (1, 0, BINARY, payload)


def test_websocket_is_used_on_the_loop_thread_only(ws_server):
    """send(), ping() and close() from a thread other than the loop's raise
    (the loop runs without the GIL and owns the connection); the WebSocket
    still works from its callbacks."""
    rec = Recorder()
    live, url = ws_server(rec)
    with connect(url) as c:
        c.send("one")
        assert c.recv(timeout=IO_TIMEOUT) == "one"
        ws = rec.sockets[0]
        for call in (lambda: ws.send("x"), ws.ping, ws.close):
            with pytest.raises(RuntimeError, match="loop thread only"):
                call()
        assert not ws.closed
        c.send("two")
        assert c.recv(timeout=IO_TIMEOUT) == "two"
    assert rec.wait_closes() == [(1000, "")]


@pytest.mark.parametrize("cls", [yimmo.Server, yimmo.WSGIServer])
def test_websocket_callbacks_refuse_worker_threads(cls):
    with pytest.raises(ValueError, match="take threads=0"):
        cls(page, port=0, websocket={"/ws": Recorder()}, threads=2)
    cls(page, port=0, websocket={}, threads=2).stop()     # no routes: threads are fine


def test_fragmented_message_from_client(ws_server):
    rec = Recorder()
    live, url = ws_server(rec)
    with connect(url) as c:
        c.send(["frag", "men", "", "ted €"])  # an iterable goes as fragments
        assert c.recv(timeout=IO_TIMEOUT) == "fragmented €"
        c.send([b"\x01", b"\x02" * 70000, b"\x03"])
        assert c.recv(timeout=IO_TIMEOUT) == b"\x01" + b"\x02" * 70000 + b"\x03"
    assert [e[1:] for e in rec.events if e[0] == "message"] == [(True, 14), (False, 70002)]


def test_fragments_with_control_frames_between(ws_server):
    """RFC 6455 5.4: control frames may be injected between fragments; the
    ping is answered at once, before the message ends."""
    live, url = ws_server(Recorder())
    conn, _ = open_raw(live)
    with conn:
        conn.send(frame(TEXT, b"Hel", fin=False) + frame(PING, b"mid"))
        assert read_frame(conn) == (1, 0, PONG, b"mid")
        conn.send(frame(CONT, b"lo", fin=False) + frame(PONG, b"unsolicited") + frame(CONT, b"!"))
        assert read_frame(conn) == (1, 0, TEXT, b"Hello!")
        conn.send(close_frame(1000))
        expect_close(conn, 1000)


def test_fragmented_send_from_server(ws_server):
    class H:
        def on_message(self, ws, msg):
            if msg.text == "text":
                ws.send("un", fin=False)
                ws.send("frag", fin=False)
                ws.send("mented")
            else:
                ws.send(b"\x00", fin=False)
                ws.ping(b"between")  # control frames may go between fragments
                ws.send(b"\x01" * 70000, fin=False)
                ws.send(b"\x02")
            ws.send("after")

    live, url = ws_server(H())
    with connect(url, max_size=None) as c:
        c.send("text")
        assert c.recv(timeout=IO_TIMEOUT) == "unfragmented"
        assert c.recv(timeout=IO_TIMEOUT) == "after"
        c.send("binary")
        assert c.recv(timeout=IO_TIMEOUT) == b"\x00" + b"\x01" * 70000 + b"\x02"
        assert c.recv(timeout=IO_TIMEOUT) == "after"
    # On the wire: really fragments (first frame text/binary, then continuations).
    conn, _ = open_raw(live)
    with conn:
        conn.send(frame(TEXT, b"text"))
        op, payload, frames = read_message(conn)
        assert (op, payload, frames) == (TEXT, b"unfragmented", [(0, TEXT), (0, CONT), (1, CONT)])
        assert read_message(conn)[:2] == (TEXT, b"after")
        conn.send(frame(TEXT, b"binary"))
        assert read_frame(conn) == (0, 0, BINARY, b"\x00")
        assert read_frame(conn) == (1, 0, PING, b"between")
        conn.send(frame(PONG, b"between"))
        assert read_frame(conn)[:3] == (0, 0, CONT)
        assert read_frame(conn) == (1, 0, CONT, b"\x02")


def test_bytes_behind_the_handshake_are_kept(ws_server):
    """The upgrade request and the first frames arrive in ONE packet: none of
    those bytes may be lost in the switch of protocol (RFC 6455 4.1)."""
    rec = Recorder()
    live, url = ws_server(rec)
    conn = live.connect()
    with conn:
        conn.send(upgrade_request() + frame(TEXT, b"first") + frame(BINARY, b"second")
                  + frame(PING, b"p") + close_frame(1000, b"done"))
        resp = conn.read_head()
        assert resp.status == 101
        assert resp.header("sec-websocket-accept") == ACCEPT
        assert read_frame(conn) == (1, 0, TEXT, b"first")
        assert read_frame(conn) == (1, 0, BINARY, b"second")
        assert read_frame(conn) == (1, 0, PONG, b"p")
        expect_close(conn, 1000)
    assert rec.wait_closes() == [(1000, "done")]


class LoopHolder:
    """A WebSocket whose message holds the loop thread until released, so
    that another client's bytes and FIN wait in the kernel together."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def on_message(self, ws, msg):
        self.entered.set()
        self.release.wait(IO_TIMEOUT)

    def hold(self, live):
        conn, _ = open_raw(live, path="/hold")
        conn.send(frame(BINARY, b"hold"))
        assert self.entered.wait(IO_TIMEOUT)
        return conn


@pytest.mark.parametrize("extra", [-1, 0, 1])
@pytest.mark.parametrize("with_handshake", [False, True], ids=["open", "handshake"])
def test_frames_and_fin_read_together_are_all_served(server, with_handshake, extra):
    """Frames and the peer's FIN found by one read, which they fill exactly
    (extra=0: read_size bytes) or nearly: every message is delivered first,
    then the peer's close is answered, or its FIN seen at once (1006).
    Before, an exact fill dropped the message and the close frame, and
    after a handshake the FIN went unseen until the idle timeout."""
    rec, holder = Recorder(), LoopHolder()
    read_size = 4096
    live = server(page, websocket={"/ws": rec, "/hold": holder}, read_size=read_size,
                  ws_idle_timeout=120)
    head = upgrade_request() if with_handshake else b""
    tail = b"" if with_handshake else close_frame(1000, b"bye")
    if not with_handshake:
        conn, _ = open_raw(live)
    else:
        conn = live.connect()
    with conn, holder.hold(live):
        size = read_size + extra - len(head) - len(tail) - 8     # 8: 16-bit length header + mask
        conn.send(head + frame(BINARY, b"x" * size) + tail)
        conn.sock.shutdown(socket.SHUT_WR)
        holder.release.set()
        if with_handshake:
            assert conn.read_head().status == 101
        assert read_frame(conn) == (1, 0, BINARY, b"x" * size)
        if with_handshake:
            conn.assert_closed()
        else:
            expect_close(conn, 1000)
    assert rec.wait_closes() == [(1006, "") if with_handshake else (1000, "bye")]
    assert rec.count("message") == 1


def test_handshake_response(ws_server):
    live, url = ws_server(Recorder())
    conn, resp = open_raw(live)
    with conn:
        assert resp.status == 101
        assert resp.has_token("upgrade", "websocket")
        assert resp.has_token("connection", "upgrade")
        assert resp.header("sec-websocket-accept") == ACCEPT
        assert resp.header("sec-websocket-protocol") is None
        assert resp.header("sec-websocket-extensions") is None  # nothing offered
        key = base64.b64encode(os.urandom(16)).decode()
    conn = live.connect()
    with conn:
        conn.send(upgrade_request(key=key))
        expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        assert conn.read_head().header("sec-websocket-accept") == expected


def test_request_attributes(ws_server):
    seen = {}

    class H:
        def on_connect(self, ws):
            seen.update(path=ws.path, query=ws.query, origin=ws.headers.get("origin"),
                        custom=ws.headers.get("x-custom"), remote=ws.remote_addr,
                        closed=ws.closed, offered=ws.subprotocols)

        def on_message(self, ws, msg):
            ws.send(repr((ws.path, ws.query, ws.closed)))

    live, url = ws_server(H())
    with connect(url + "?room=1&x=%20", origin="http://example.com",
                 additional_headers={"X-Custom": "yes"}) as c:
        c.send("?")
        assert c.recv(timeout=IO_TIMEOUT) == repr(("/ws", "room=1&x=%20", False))
        local = c.socket.getsockname()
    assert seen["path"] == "/ws" and seen["query"] == "room=1&x=%20"
    assert seen["origin"] == "http://example.com" and seen["custom"] == "yes"
    assert tuple(seen["remote"][:2]) == tuple(local[:2])
    assert seen["offered"] == ()


# ---------------------------------------------------------------------------
# Ping, close


def test_ping_pong(ws_server):
    class H:
        def on_message(self, ws, msg):
            ws.ping(msg.data)

    live, url = ws_server(H())
    with connect(url) as c:
        for payload in [b"", b"abc", b"x" * 125]:
            assert c.ping(payload).wait(IO_TIMEOUT)
    conn, _ = open_raw(live)
    with conn:
        conn.send(frame(PING, b"x" * 125))
        assert read_frame(conn) == (1, 0, PONG, b"x" * 125)
        conn.send(frame(BINARY, b"server ping"))
        assert read_frame(conn) == (1, 0, PING, b"server ping")
        conn.send(close_frame(1000))
        expect_close(conn, 1000)


def test_ping_arguments(ws_server):
    errors = []

    class H:
        def on_message(self, ws, msg):
            for bad in [(b"x" * 126,), ("text",), (b"a", b"b")]:
                try:
                    ws.ping(*bad)
                except (ValueError, TypeError) as e:
                    errors.append(type(e).__name__)
            ws.send("done")

    live, url = ws_server(H())
    with connect(url) as c:
        c.send("go")
        assert c.recv(timeout=IO_TIMEOUT) == "done"
    assert errors == ["ValueError", "TypeError", "TypeError"]


@pytest.mark.parametrize("code,reason", [(1000, ""), (1001, "going"), (4000, "bye €"), (3999, "")])
def test_client_closes(ws_server, code, reason):
    rec = Recorder()
    live, url = ws_server(rec)
    with connect(url) as c:
        c.send("hi")
        c.recv(timeout=IO_TIMEOUT)
        c.close(code, reason)
        assert c.close_code == code  # the server echoes the code (RFC 6455 5.5.1)
    assert rec.wait_closes() == [(code, reason)]


def test_closed_is_true_in_on_close(ws_server):
    """ws.closed: "True once the connection is closing or closed"; in on_close
    it is closing at least, whichever side closed."""
    rec = Recorder()
    live, url = ws_server(rec)
    with connect(url) as c:
        c.send("hi")
        c.recv(timeout=IO_TIMEOUT)
    conn, _ = open_raw(live)
    conn.close()
    rec.wait_closes(2)
    assert [e[3] for e in rec.events if e[0] == "close"] == [True, True]


def test_client_closes_without_code(ws_server):
    rec = Recorder()
    live, url = ws_server(rec)
    conn, _ = open_raw(live)
    with conn:
        conn.send(close_frame())
        fin, rsv, op, payload = read_frame(conn)
        assert (op, payload) == (CLOSE, b"")  # answered with an empty close too
        conn.assert_closed()
    assert rec.wait_closes() == [(1005, "")]


@pytest.mark.parametrize("code,reason", [(1000, ""), (1001, "shutting down"), (4001, "server bye"),
                                         (1011, "x" * 123)])
def test_server_closes(ws_server, code, reason):
    class H(Recorder):
        def on_message(self, ws, msg):
            ws.close(code, reason)
            with pytest.raises(ConnectionError):
                ws.send("too late")

    rec = H()
    live, url = ws_server(rec)
    with connect(url) as c:
        c.send("close me")
        with pytest.raises(ConnectionClosed) as ei:
            c.recv(timeout=IO_TIMEOUT)
        assert ei.value.rcvd.code == code and ei.value.rcvd.reason == reason
    # The client's answering close frame: the same code (websockets echoes the reason too).
    assert [c for c, _ in rec.wait_closes()] == [code]


def test_server_close_handshake_on_the_wire(ws_server):
    class H:
        def on_message(self, ws, msg):
            ws.close(4002, "later")

    rec = Recorder()
    live, url = ws_server(H())
    conn, _ = open_raw(live)
    with conn:
        conn.send(frame(TEXT, b"x"))
        assert read_frame(conn) == (1, 0, CLOSE, struct.pack("!H", 4002) + b"later")
        # The server waits for our close, then closes the TCP connection.
        conn.send(close_frame(4002))
        conn.assert_closed()


@pytest.mark.parametrize("args, error", [
    ((999,), ValueError), ((1004,), ValueError), ((1005,), ValueError), ((1006,), ValueError),
    ((1015,), ValueError), ((2999,), ValueError), ((5000,), ValueError), ((-1,), ValueError),
    ((2 ** 40,), ValueError), ((1000, "r" * 124), ValueError), ((1000, "é" * 62), ValueError),
    # RFC 6455 5.5.1: the reason is UTF-8 text; bytes could be anything.
    ((1000, b"\xff\xfe"), TypeError), (("1000",), TypeError),
])
def test_close_arguments(ws_server, args, error):
    errors = []

    class H:
        def on_message(self, ws, msg):
            try:
                ws.close(*args)
            except Exception as e:
                errors.append(e)
            ws.send("still open")

    live, url = ws_server(H())
    with connect(url) as c:
        c.send("x")
        assert c.recv(timeout=IO_TIMEOUT) == "still open"
    assert len(errors) == 1 and type(errors[0]) is error, errors


@pytest.mark.parametrize("payload,code", [
    (b"\x03", 1002),                          # a 1-byte close payload
    (struct.pack("!H", 999), 1002),           # codes that may not be sent (RFC 6455 7.4)
    (struct.pack("!H", 1004), 1002),
    (struct.pack("!H", 1005), 1002),
    (struct.pack("!H", 1006), 1002),
    (struct.pack("!H", 1015), 1002),
    (struct.pack("!H", 2000), 1002),
    (struct.pack("!H", 5000), 1002),
    (struct.pack("!H", 1000) + b"\xff", 1007),  # reason not UTF-8
])
def test_bad_close_frames(ws_server, payload, code):
    rec = Recorder()
    live, url = ws_server(rec)
    conn, _ = open_raw(live)
    with conn:
        conn.send(frame(CLOSE, payload))
        expect_close(conn, code)
    assert [c for c, _ in rec.wait_closes()] == [code]


def test_on_close_once_when_the_client_vanishes(ws_server):
    rec = Recorder()
    live, url = ws_server(rec)
    conn, _ = open_raw(live)
    conn.send(frame(TEXT, b"hi"))
    assert read_frame(conn) == (1, 0, TEXT, b"hi")
    conn.close()  # FIN, no close frame
    assert rec.wait_closes() == [(1006, "")]
    conn, _ = open_raw(live)
    conn.reset()  # RST
    assert rec.wait_closes(2) == [(1006, ""), (1006, "")]
    # Mid-frame: a header announcing more than ever comes.
    conn, _ = open_raw(live)
    conn.send(frame(BINARY, b"x" * 1000)[:100])
    time.sleep(0.05)
    conn.close()
    assert rec.wait_closes(3) == [(1006, "")] * 3
    time.sleep(0.2)
    assert len(rec.closes()) == 3
    assert rec.count("open") == 3


def test_on_close_once_after_a_close_handshake_and_eof(ws_server):
    """Close frame, then the client drops the TCP connection before reading the
    answer: still exactly one on_close, with the client's code."""
    rec = Recorder()
    live, url = ws_server(rec)
    for i in range(20):
        conn, _ = open_raw(live)
        conn.send(close_frame(4000 + i))
        conn.reset()
    closes = rec.wait_closes(20)
    time.sleep(0.2)
    assert len(rec.closes()) == 20
    assert all(code in (4000 + i, 1006) for i, (code, _) in enumerate(sorted(closes)))


def test_handler_error_closes_1011(ws_server):
    class H(Recorder):
        def on_message(self, ws, msg):
            if msg.text == "boom":
                raise RuntimeError("handler failed")
            ws.send(msg.text)

    rec = H()
    live, url = ws_server(rec)
    with connect(url) as c:
        c.send("boom")
        with pytest.raises(ConnectionClosed) as ei:
            c.recv(timeout=IO_TIMEOUT)
        assert ei.value.rcvd.code == 1011
    rec.wait_closes()
    with connect(url) as c:  # the server goes on
        c.send("fine")
        assert c.recv(timeout=IO_TIMEOUT) == "fine"


# ---------------------------------------------------------------------------
# Subprotocols, refusals


def test_subprotocol_selection(ws_server):
    rec = Recorder(subprotocol="chat.v2")
    live, url = ws_server(rec)
    with connect(url, subprotocols=["chat.v1", "chat.v2"]) as c:
        assert c.subprotocol == "chat.v2"
        assert c.response.headers["Sec-WebSocket-Protocol"] == "chat.v2"
    with connect(url, subprotocols=["other"]) as c:
        assert c.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in c.response.headers
    with connect(url) as c:
        assert c.subprotocol is None
    connects = [e for e in rec.events if e[0] == "connect"]
    assert [e[3] for e in connects] == [["chat.v1", "chat.v2"], ["other"], []]
    assert [e[1] for e in rec.events if e[0] == "open"] == ["chat.v2", None, None]


@pytest.mark.parametrize("routes, exc", [({1: Recorder()}, TypeError), ({b"/ws": Recorder()}, TypeError),
                                          ({"ws": Recorder()}, ValueError), ({"": Recorder()}, ValueError)])
def test_websocket_paths_that_cannot_match_are_refused(routes, exc):
    with pytest.raises(exc, match="websocket path"):
        yimmo.Server(page, port=0, websocket=routes)


def test_subprotocols_cannot_be_changed_by_the_application(ws_server):
    """on_connect's choice is checked against what the client offered: the
    offer is a tuple, so the application cannot add to it."""
    seen = []

    class H(Recorder):
        def on_connect(self, ws):
            seen.append(ws.subprotocols)
            ws.subprotocols.append("evil")      # AttributeError: refused, logged, 500
            return "evil"

    live, url = ws_server(H())
    with pytest.raises(InvalidStatus) as ei:
        connect(url, subprotocols=["chat"], open_timeout=IO_TIMEOUT)
    assert ei.value.response.status_code == 500
    assert seen == [("chat",)]


@pytest.mark.parametrize("deflate", [True, False])
def test_a_malformed_extensions_line_is_refused_before_on_connect(ws_server, deflate):
    """RFC 6455 4.2.1: a handshake that breaks the grammar gets 400, and
    on_connect ("a valid handshake arrived") never hears of it."""
    rec = Recorder()
    live, url = ws_server(rec, ws_deflate=deflate)
    with live.connect() as c:
        c.send(upgrade_request("/ws", extra=[("Sec-WebSocket-Extensions", "permessage-deflate x")]))
        resp = c.read_response()
        assert resp.status == 400 and b"malformed Sec-WebSocket-Extensions" in resp.body, resp
    assert rec.count("connect") == 0


def test_subprotocol_header_variants(ws_server):
    rec = Recorder(subprotocol="b")
    live, url = ws_server(rec)
    conn, resp = open_raw(live, extra=[("Sec-WebSocket-Protocol", " a ,b,  c ")])
    conn.close()
    assert resp.header("sec-websocket-protocol") == "b"
    # RFC 6455 11.3.4: several lines are one list.
    conn, resp = open_raw(live, extra=[("Sec-WebSocket-Protocol", "x"), ("Sec-WebSocket-Protocol", "b")])
    conn.close()
    assert resp.header("sec-websocket-protocol") == "b"
    assert [e[3] for e in rec.events if e[0] == "connect"] == [["a", "b", "c"], ["x", "b"]]


@pytest.mark.parametrize("decision, offer", [("chat", None), ("chat", ["a", "b"]), ("a, b", ["a", "b"]),
                                             (b"a", ["a"]), (1.5, ["a"]), (["a"], ["a"]),
                                             (200, None), (399, None), (600, None), (2**70, None)])
def test_a_subprotocol_not_offered_or_not_a_str_is_a_500(ws_server, decision, offer):
    """RFC 6455 4.2.2: the server picks one of the client's subprotocols, or
    none; anything else is the application's mistake, logged. So is a
    status that is no refusal (once: 403, silently)."""
    rec = Recorder(refuse=decision)
    live, url = ws_server(rec)
    with pytest.raises(InvalidStatus) as ei:
        connect(url, subprotocols=offer, open_timeout=IO_TIMEOUT)
    assert ei.value.response.status_code == 500
    assert rec.count("open") == 0


@pytest.mark.parametrize("decision,status", [(False, 403), (401, 401), (404, 404), (503, 503)])
def test_on_connect_refuses(ws_server, decision, status):
    rec = Recorder(refuse=decision)
    live, url = ws_server(rec)
    with pytest.raises(InvalidStatus) as ei:
        connect(url, open_timeout=IO_TIMEOUT)
    assert ei.value.response.status_code == status
    conn = live.connect()
    with conn:
        conn.send(upgrade_request())
        resp = conn.read_response()
        assert resp.status == status
        assert resp.header("upgrade") is None and resp.header("sec-websocket-accept") is None
        conn.assert_closed()
    time.sleep(0.05)
    assert rec.count("open") == 0 and rec.count("close") == 0 and rec.count("connect") == 2


def test_send_or_close_in_on_connect_is_a_runtime_error(ws_server):
    """In on_connect the handshake is being decided: close() there was
    silently ignored, and the client was then accepted and left waiting."""
    class H(Recorder):
        def on_connect(self, ws):
            for call in (lambda: ws.close(1008, "go away"), lambda: ws.send("early"), ws.ping):
                try:
                    call()
                except RuntimeError as e:
                    self._add("raised", str(e))
            return None

    rec = H()
    live, url = ws_server(rec)
    with connect(url, open_timeout=IO_TIMEOUT) as c:
        c.send("hi")
        assert c.recv(timeout=IO_TIMEOUT) == "hi"
    raised = [e[1] for e in rec.events if e[0] == "raised"]
    assert len(raised) == 3 and all("not open yet" in m for m in raised), raised


def test_a_handler_whose_attributes_fail_is_the_applications_error(ws_server):
    """Only a missing callback is skipped: a handler whose __getattr__
    raises something else refuses the handshake (500, logged); once every
    error was swallowed and the connection accepted with nothing to run."""
    class H:
        def __getattr__(self, name):
            raise KeyError(name)

    live, url = ws_server(H())
    with pytest.raises(InvalidStatus) as ei:
        connect(url, open_timeout=IO_TIMEOUT)
    assert ei.value.response.status_code == 500


def test_on_connect_raises_500(ws_server):
    class H(Recorder):
        def on_connect(self, ws):
            raise ValueError("no")

    rec = H()
    live, url = ws_server(rec)
    with pytest.raises(InvalidStatus) as ei:
        connect(url, open_timeout=IO_TIMEOUT)
    assert ei.value.response.status_code == 500
    assert rec.count("open") == 0 and rec.count("close") == 0


# ---------------------------------------------------------------------------
# Handshake rejections (RFC 6455 4.2.1, 4.4)


@pytest.mark.parametrize("name,request_bytes", [
    ("POST", upgrade_request(method="POST")),
    ("HTTP/1.0", upgrade_request(http="HTTP/1.0")),
    ("no Connection", upgrade_request(connection=None)),
    ("Connection: keep-alive", upgrade_request(connection="keep-alive")),
    ("no key", upgrade_request(key=None)),
    ("short key", upgrade_request(key="dGhlIHNhbXBsZSBub25jZQ=")),
    ("long key", upgrade_request(key="dGhlIHNhbXBsZSBub25jZQ===")),
    ("key of 17 bytes", upgrade_request(key=base64.b64encode(b"x" * 17).decode())),
    ("key of 15 bytes", upgrade_request(key=base64.b64encode(b"x" * 15).decode() + "A")),
    ("key not base64", upgrade_request(key="dGhlIHNhbXBsZ!Bub25jZQ==")),
    ("two keys", upgrade_request(extra=[("Sec-WebSocket-Key", KEY)])),
])
def test_handshake_400(ws_server, name, request_bytes):
    rec = Recorder()
    live, url = ws_server(rec)
    conn = live.connect()
    with conn:
        conn.send(request_bytes)
        resp = conn.read_response()
        assert resp.status == 400, name
        assert resp.header("sec-websocket-accept") is None
        assert resp.has_token("connection", "close") or name == "HTTP/1.0"   # 1.0: closing is the default
        conn.assert_closed()
    assert rec.count("connect") == 0


@pytest.mark.parametrize("version", ["8", "12", "14", None, "13, 8"])
def test_handshake_426(ws_server, version):
    rec = Recorder()
    live, url = ws_server(rec)
    conn = live.connect()
    with conn:
        conn.send(upgrade_request(version=version))
        resp = conn.read_response()
        assert resp.status == 426
        assert resp.header("sec-websocket-version") == "13"
        assert resp.header("upgrade") == "websocket"      # RFC 9110 15.5.22
        assert resp.has_token("connection", "close")      # RFC 9112 9.6
        conn.assert_closed()
    assert rec.count("connect") == 0


def test_plain_http_on_a_websocket_path(ws_server):
    rec = Recorder()
    live, url = ws_server(rec)
    resp, body = live.get("/ws")
    assert (resp.status, body) == (200, b"plain http\n")
    resp, body = live.get("/other")
    assert (resp.status, body) == (200, b"plain http\n")
    assert rec.count("connect") == 0


def test_upgrade_on_another_path_goes_to_http(ws_server):
    rec = Recorder()
    live, url = ws_server(rec)
    conn = live.connect()
    with conn:
        conn.send(upgrade_request(path="/elsewhere"))
        resp = conn.read_response()
        assert resp.status != 101
    assert rec.count("connect") == 0


# ---------------------------------------------------------------------------
# Malformed frames over raw sockets: the exact close code, then TCP closes


BAD_FRAMES = [
    ("unmasked frame", frame(TEXT, b"hi", mask=None), 1002),
    ("RSV1 without deflate", frame(TEXT, b"hi", rsv=4), 1002),
    ("RSV2", frame(BINARY, b"hi", rsv=2), 1002),
    ("RSV3", frame(BINARY, b"hi", rsv=1), 1002),
    ("reserved opcode 3", frame(0x3, b"x"), 1002),
    ("reserved opcode 0xB", frame(0xB), 1002),
    ("ping over 125 bytes", frame(PING, b"p" * 126), 1002),
    ("fragmented ping", frame(PING, b"p", fin=False), 1002),
    ("fragmented close", frame(CLOSE, struct.pack("!H", 1000), fin=False), 1002),
    ("non-minimal 16-bit length", frame(BINARY, b"x" * 100, ext=16), 1002),
    ("non-minimal 64-bit length", frame(BINARY, b"x" * 1000, ext=64), 1002),
    ("64-bit length MSB set", frame(BINARY, length=1 << 63)[:14], 1002),
    ("continuation without start", frame(CONT, b"x"), 1002),
    ("new message inside a fragmented one", frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
    ("invalid UTF-8", frame(TEXT, b"ok\xff"), 1007),
    ("invalid UTF-8 across fragments",
     frame(TEXT, b"\xce", fin=False) + frame(PING) + frame(CONT, b"x"), 1007),
    ("text ends inside a character", frame(TEXT, b"a", fin=False) + frame(CONT, b"\xe2\x82"), 1007),
    ("surrogate", frame(TEXT, b"\xed\xa0\x80"), 1007),
    # Fail fast: a header announcing 1000 bytes of which only the bad start
    # arrives. The server must not wait for the rest.
    ("invalid UTF-8 fails before the frame ends", frame(TEXT, b"ab\xc0" + b"x" * 997)[:11], 1007),
    ("over ws_max_message", frame(BINARY, b"m" * 1025), 1009),
    ("over ws_max_message in fragments",
     frame(BINARY, b"m" * 1000, fin=False) + frame(CONT, b"m" * 100), 1009),
    # Only the header of a huge frame: refused as it arrives.
    ("huge frame announced", frame(BINARY, length=1 << 40)[:14], 1009),
]


@pytest.mark.parametrize("name,data,code", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_malformed_frames(ws_server, name, data, code):
    rec = Recorder()
    live, url = ws_server(rec, ws_max_message=1024)
    conn, _ = open_raw(live)
    with conn:
        conn.send(frame(TEXT, b"before"))
        assert read_frame(conn) == (1, 0, TEXT, b"before")
        conn.send(data)
        expect_close(conn, code)
    assert [c for c, _ in rec.wait_closes()] == [code]
    assert rec.count("message") == 1


@pytest.mark.parametrize("name,data,code", BAD_FRAMES[:6], ids=[b[0] for b in BAD_FRAMES[:6]])
def test_malformed_frames_byte_by_byte(ws_server, name, data, code):
    live, url = ws_server(Recorder(), ws_max_message=1024)
    conn, _ = open_raw(live)
    with conn:
        for i in range(len(data)):
            try:
                conn.send(data[i:i + 1])
            except OSError:
                break  # the server already closed
            time.sleep(0.002)
        expect_close(conn, code)


def test_max_message_with_the_websockets_client(ws_server):
    rec = Recorder()
    live, url = ws_server(rec, ws_max_message=MiB)
    with connect(url, max_size=None) as c:
        c.send(b"m" * MiB)
        assert c.recv(timeout=IO_TIMEOUT) == b"m" * MiB
        c.send(b"m" * (MiB + 1))
        with pytest.raises(ConnectionClosed) as ei:
            c.recv(timeout=IO_TIMEOUT)
        assert ei.value.rcvd.code == 1009
    assert [c for c, _ in rec.wait_closes()] == [1009]


# ---------------------------------------------------------------------------
# Load


def test_large_messages_8mib(ws_server):
    live, url = ws_server(Recorder())
    text = ("0123456789abcdéf" * (8 * MiB // 17))[:8 * MiB // 2]
    data = os.urandom(8 * MiB)
    with connect(url, max_size=None) as c:
        c.send(data)
        assert c.recv(timeout=30) == data
        c.send(text)
        assert c.recv(timeout=30) == text
        c.send([data[:3 * MiB], data[3 * MiB:]])
        assert c.recv(timeout=30) == data


def test_100_concurrent_clients(ws_server):
    rec = Recorder()
    live, url = ws_server(rec)

    async def client(i):
        async with aconnect(url, open_timeout=IO_TIMEOUT * 2) as c:
            for j in range(10):
                msg = "client %d message %d " % (i, j) + "x" * (i * 37)
                await c.send(msg)
                assert await asyncio.wait_for(c.recv(), IO_TIMEOUT * 2) == msg
            await c.send(b"\x00" * 1000 * i)
            assert await asyncio.wait_for(c.recv(), IO_TIMEOUT * 2) == b"\x00" * 1000 * i

    async def main():
        await asyncio.gather(*(client(i) for i in range(100)))

    asyncio.run(main())
    assert sorted(rec.wait_closes(100)) == [(1000, "")] * 100
    assert rec.count("open") == 100 and rec.count("message") == 1100


# ---------------------------------------------------------------------------
# Backpressure, idle timeout


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(bool(os.environ.get("YIMMO_SANITIZED")), reason="RSS is not meaningful under sanitizers")
def test_pings_from_a_client_that_never_reads_do_not_pile_up(ws_server):
    """Every ping once queued a pong: a client pinging without reading grew
    the server by gigabytes. Past the high-water mark only the last ping is
    answered, once output drains (RFC 6455 5.5.3)."""
    live, url = ws_server(Recorder())
    conn = live.connect(rcvbuf=4096, timeout=10)
    with conn:
        conn.send(upgrade_request())
        assert conn.read_head().status == 101
        before = rss()
        batch = b"".join(frame(PING, b"%09d" % i + b"p" * 100) for i in range(1000))
        for _ in range(300):        # 300,000 pings, 40 MB of pongs if each were queued
            conn.send(batch)
        last = b"%09d" % 999 + b"p" * 100
        conn.send(frame(PING, b"the last one"))
        growth = rss() - before
        while True:                 # the answers: the last ping's among them
            fin, rsv, op, payload = read_frame(conn)
            assert op == PONG
            if payload == b"the last one":
                break
            assert payload == last or payload.startswith(b"0"), payload[:20]
    assert growth < 24 * MiB, "RSS grew %.1f MiB" % (growth / MiB)


def test_a_client_that_reads_nothing_is_dropped_after_the_send_timeout(ws_server):
    """A message the client never reads: after send_timeout without
    progress the connection ends (1006 to on_close), as an HTTP response
    would; its pings kept it open until the idle timeout once."""
    class Big(Recorder):
        def on_open(self, ws):
            super().on_open(ws)
            ws.send(b"b" * (8 * MiB))

    rec = Big()
    live, url = ws_server(rec, send_timeout=0.5, ws_idle_timeout=60)
    conn = live.connect(rcvbuf=4096, timeout=10)
    with conn:
        conn.send(upgrade_request())
        assert conn.read_head().status == 101
        # It pings to look alive, and reads nothing.
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline and not wait_for(rec.closes, timeout=0.2):
            try:
                conn.send(frame(PING, b"alive"))
            except OSError:
                break
        assert rec.wait_closes(1) == [(1006, "")]


def test_backpressure_send_limit(ws_server):
    """A client that never reads: send() raises BufferError once more than
    ws_send_limit is queued, and the process's memory stays bounded however
    often the server tries. What was accepted all arrives, in order."""
    limit = MiB
    chunk = b"c" * (64 * 1024)
    stats = {"ok": 0, "buffer_errors": 0, "rounds": 0}

    class H:
        def on_message(self, ws, msg):
            stats["rounds"] += 1
            for _ in range(256):  # 16 MiB per round without a limit
                try:
                    ws.send(chunk)
                except BufferError:
                    stats["buffer_errors"] += 1
                    break
                stats["ok"] += 1

    live, url = ws_server(H(), ws_send_limit=limit)
    conn = live.connect(rcvbuf=4096, timeout=10)
    with conn:
        conn.send(upgrade_request())
        assert conn.read_head().status == 101
        before = rss()
        conn.send(frame(TEXT, b"go"))
        assert wait_for(lambda: stats["rounds"] == 1)
        first = stats["ok"]
        assert stats["buffer_errors"] == 1
        assert first * len(chunk) <= limit, "queued %d bytes past a %d limit" % (first * len(chunk), limit)
        assert first >= 1
        for _ in range(30):  # 30 x 16 MiB offered
            conn.send(frame(TEXT, b"go"))
        assert wait_for(lambda: stats["rounds"] == 31, timeout=10)
        assert stats["buffer_errors"] == 31
        # Everything accepted fits the limit plus what the kernel buffers hold.
        sndbuf = socket.socket().getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert stats["ok"] * len(chunk) <= limit + 8 * MiB + 2 * sndbuf
        growth = rss() - before
        assert growth < 64 * MiB, "memory grew by %d MiB" % (growth // MiB)
        # Now read: exactly the accepted messages arrive, whole.
        for _ in range(stats["ok"]):
            assert read_frame(conn) == (1, 0, BINARY, chunk)
        conn.send(close_frame(1000))
        expect_close(conn, 1000)


def test_idle_timeout(ws_server):
    rec = Recorder()
    live, url = ws_server(rec, ws_idle_timeout=0.5)
    conn, _ = open_raw(live)
    with conn:
        t0 = time.monotonic()
        reason = expect_close(conn, 1001)
        elapsed = time.monotonic() - t0
        assert 0.4 <= elapsed < 3.0, elapsed
        assert reason == b"idle timeout"
    assert rec.wait_closes() == [(1001, "idle timeout")]


def test_idle_timeout_also_while_a_keepalive_ping_is_out(ws_server):
    """A silent peer is closed at the idle deadline even when a ping's
    timeout would come later (the WSGI receive() already did so)."""
    rec = Recorder()
    live, url = ws_server(rec, ws_idle_timeout=0.6, ws_ping_interval=0.2, ws_ping_timeout=30)
    conn, _ = open_raw(live)
    with conn:
        t0 = time.monotonic()
        assert read_frame(conn)[2] == PING
        assert expect_close(conn, 1001) == b"idle timeout"
        assert time.monotonic() - t0 < 10
    assert rec.wait_closes() == [(1001, "idle timeout")]


def test_idle_timeout_reset_by_traffic(ws_server):
    live, url = ws_server(Recorder(), ws_idle_timeout=0.5)
    with connect(url) as c:
        for _ in range(6):  # 1.2 s of traffic, a frame every 0.2 s
            time.sleep(0.2)
            assert c.ping().wait(IO_TIMEOUT)
        c.send("still here")
        assert c.recv(timeout=IO_TIMEOUT) == "still here"
        with pytest.raises(ConnectionClosed) as ei:
            c.recv(timeout=IO_TIMEOUT)
        assert ei.value.rcvd.code == 1001


def test_stop_with_open_websockets(server):
    """RFC 6455 7.4.1: a server going down says 1001 and waits for the
    peers' close frames (up to 5 s), rather than dropping the connections."""
    rec = Recorder()
    live = server(page, websocket={"/ws": rec})
    conns = [open_raw(live)[0] for _ in range(5)]
    for c in conns:
        c.send(frame(TEXT, b"x"))
        assert read_frame(c) == (1, 0, TEXT, b"x")
    t0 = time.monotonic()
    live.srv.stop(30)
    for c in conns:
        assert read_frame(c) == (1, 0, CLOSE, struct.pack("!H", 1001) + b"server shutting down")
        c.send(close_frame(1001))
        c.assert_closed()
    live.wait_returned()
    assert time.monotonic() - t0 < 3
    assert rec.wait_closes(5) == [(1001, "")] * 5
    for c in conns:
        c.close()


# ---------------------------------------------------------------------------
# permessage-deflate (RFC 7692): skipped while the server declines it


def deflate_negotiated(live, offer="permessage-deflate; client_max_window_bits"):
    conn, resp = open_raw(live, extra=[("Sec-WebSocket-Extensions", offer)])
    conn.close()
    return resp.header("sec-websocket-extensions")


@pytest.fixture
def deflate_server(ws_server):
    def start(handler=None, **kw):
        live, url = ws_server(handler or Recorder(), **kw)
        if not deflate_negotiated(live):
            pytest.skip("the server's 101 has no Sec-WebSocket-Extensions (deflate not built in)")
        return live, url

    return start


def test_deflate_off_declines(ws_server):
    live, url = ws_server(Recorder(), ws_deflate=False)
    assert deflate_negotiated(live) is None
    with connect(url, compression="deflate") as c:
        assert "Sec-WebSocket-Extensions" not in c.response.headers
        c.send("uncompressed")
        assert c.recv(timeout=IO_TIMEOUT) == "uncompressed"


def params(header):
    ext, *ps = [p.strip() for p in header.split(";")]
    assert ext == "permessage-deflate"
    return {p.partition("=")[0].strip(): p.partition("=")[2].strip() or None for p in ps}


def test_deflate_negotiation(deflate_server):
    live, url = deflate_server()
    # The bare offer: accepted, no parameters needed.
    assert params(deflate_negotiated(live, "permessage-deflate")) is not None
    p = params(deflate_negotiated(live, "permessage-deflate; server_no_context_takeover"))
    assert "server_no_context_takeover" in p
    p = params(deflate_negotiated(live, "permessage-deflate; server_max_window_bits=10"))
    assert p.get("server_max_window_bits") in ("8", "9", "10")
    # client_max_window_bits without a value: the server may answer with one.
    p = params(deflate_negotiated(live, "permessage-deflate; client_max_window_bits"))
    assert p.get("client_max_window_bits") in (None, "8", "9", "10", "11", "12", "13", "14", "15")
    # Not offered: never answered (RFC 7692 5.1).
    p = params(deflate_negotiated(live, "permessage-deflate"))
    assert "client_max_window_bits" not in p
    # An unacceptable first offer falls back to the next one.
    hdr = deflate_negotiated(live, "permessage-deflate; server_max_window_bits=16, permessage-deflate")
    assert hdr is not None and "server_max_window_bits=16" not in hdr
    # Unknown extensions only: none answered.
    assert deflate_negotiated(live, "x-webkit-deflate-frame") is None


def test_deflate_offers_on_several_extension_lines(deflate_server):
    """RFC 6455 11.3.2: Sec-WebSocket-Extensions may appear more than once;
    the lines are one list, in order, and each must parse."""
    live, url = deflate_server()

    def answer(*lines):
        conn, resp = open_raw(live, extra=[("Sec-WebSocket-Extensions", v) for v in lines])
        conn.close()
        return resp.header("sec-websocket-extensions")

    assert answer("x-webkit-deflate-frame", "permessage-deflate") == "permessage-deflate"
    # The first acceptable offer wins, on whichever line it is.
    p = params(answer("permessage-deflate; server_max_window_bits=16",
                      "permessage-deflate; server_no_context_takeover",
                      "permessage-deflate"))
    assert "server_no_context_takeover" in p
    assert answer("x-foo", "x-bar") is None
    # A malformed later line is refused even after an accepted offer.
    with live.connect() as c:
        c.send(upgrade_request("/ws", extra=[("Sec-WebSocket-Extensions", "permessage-deflate"),
                                             ("Sec-WebSocket-Extensions", "permessage-deflate x")]))
        resp = c.read_response()
        assert resp.status == 400 and b"Sec-WebSocket-Extensions" in resp.body, resp


def test_deflate_quoted_parameter_values(deflate_server):
    """RFC 6455 9.1: a parameter value may be a quoted-string, which must be
    a token once unquoted (RFC 7692 7.1.2.1: a window size)."""
    live, url = deflate_server()
    p = params(deflate_negotiated(live, 'permessage-deflate; server_max_window_bits="10"'))
    assert p.get("server_max_window_bits") == "10"
    p = params(deflate_negotiated(live, 'permessage-deflate; server_max_window_bits="\\1\\1"'))
    assert p.get("server_max_window_bits") == "11"
    # Well-formed, but not a window size once unquoted: the offer is declined.
    for bad in ('"1 0"', '"100000000000"', '""'):
        assert deflate_negotiated(live, "permessage-deflate; server_max_window_bits=" + bad) is None


@pytest.mark.parametrize("offer", [
    'permessage-deflate; server_max_window_bits="10',       # unterminated
    'permessage-deflate; server_max_window_bits="10"x',     # text after the quotes
    "permessage-deflate; x=@",                               # not a token
    "permessage-deflate x",
    "permessage-deflate; =10",
    "permessage-deflate, ;",
    ",",
])
def test_deflate_malformed_extensions_header_400(deflate_server, offer):
    live, url = deflate_server()
    with live.connect() as c:
        c.send(upgrade_request("/ws", extra=[("Sec-WebSocket-Extensions", offer)]))
        resp = c.read_response()
        assert resp.status == 400 and b"Sec-WebSocket-Extensions" in resp.body, resp
        c.assert_closed()
    with connect(url, compression="deflate") as ws:   # the server goes on
        ws.send("after")
        assert ws.recv(timeout=IO_TIMEOUT) == "after"


def test_deflate_round_trips(deflate_server):
    live, url = deflate_server()
    with connect(url, compression="deflate", max_size=None) as c:
        assert "permessage-deflate" in c.response.headers["Sec-WebSocket-Extensions"]
        for msg in ["", "a", "hello " * 1000, "κόσμε" * 5000, b"\x00" * (8 * MiB),
                    os.urandom(100000), b"", ["frag", "mented " * 100]]:
            c.send(msg)
            expect = "".join(msg) if isinstance(msg, list) else msg
            assert c.recv(timeout=30) == expect


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; server_max_window_bits=9; client_max_window_bits=9",
])
def test_deflate_round_trips_with_parameters(deflate_server, offer):
    live, url = deflate_server()
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    p = params(offer)
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover="server_no_context_takeover" in p,
        client_no_context_takeover="client_no_context_takeover" in p,
        server_max_window_bits=int(p["server_max_window_bits"]) if "server_max_window_bits" in p else None,
        client_max_window_bits=int(p["client_max_window_bits"]) if "client_max_window_bits" in p else None)
    with connect(url, extensions=[factory], compression=None, max_size=None) as c:
        for i in range(20):
            msg = ("message %d " % i) * (50 * i + 1)
            c.send(msg)
            assert c.recv(timeout=IO_TIMEOUT) == msg


def compress(data, wbits=15):
    z = zlib.compressobj(9, zlib.DEFLATED, -wbits)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_deflate_compression_bomb_1009(deflate_server):
    """A small compressed frame that inflates past ws_max_message: close 1009,
    and memory does not grow by the inflated size."""
    rec = Recorder()
    live, url = deflate_server(rec, ws_max_message=64 * 1024)
    bomb = compress(b"\x00" * (256 * MiB))
    assert len(bomb) < 512 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn, resp = open_raw(live, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    with conn:
        assert resp.header("sec-websocket-extensions")
        conn.send(frame(BINARY, compress(b"small"), rsv=4))
        assert read_message(conn)[:1] == (BINARY,)
        try:
            conn.send(frame(BINARY, bomb, rsv=4))
        except OSError:
            pass
        expect_close(conn, 1009)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (after - before) * 1024 < 128 * MiB
    # deflate_negotiated()'s probe connection dropped first (1006).
    assert [c for c, _ in rec.wait_closes(2)] == [1006, 1009]


def test_deflate_corrupt_data_1007(deflate_server):
    live, url = deflate_server()
    conn, resp = open_raw(live, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    with conn:
        conn.send(frame(TEXT, b"\xff\xff\xff\xff garbage", rsv=4))
        expect_close(conn, 1007)


def test_deflate_invalid_utf8_after_inflating_1007(deflate_server):
    live, url = deflate_server()
    conn, resp = open_raw(live, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    with conn:
        conn.send(frame(TEXT, compress(b"ok \xff"), rsv=4))
        expect_close(conn, 1007)


def test_deflate_rsv1_on_continuation_1002(deflate_server):
    live, url = deflate_server()
    conn, resp = open_raw(live, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    with conn:
        conn.send(frame(TEXT, b"a", rsv=4, fin=False) + frame(CONT, b"b", rsv=4))
        expect_close(conn, 1002)


def test_keepalive_ping_is_answered_by_a_live_client(ws_server):
    rec = Recorder()
    live, url = ws_server(rec, ws_ping_interval=0.2, ws_ping_timeout=0.5)
    with connect(url) as c:             # the websockets client answers pings
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            try:
                c.recv(timeout=0.2)
            except TimeoutError:
                pass
        c.send("still here")
        assert c.recv(timeout=IO_TIMEOUT) == "still here"
    assert [code for code, _ in rec.wait_closes()] == [1000]


class SendsThenCloses:
    def __init__(self, size):
        self.size, self.closes = size, []

    def on_open(self, ws):
        ws.send(b"b" * self.size)       # more than the socket buffers take at once
        ws.close(1000, "bye")

    def on_close(self, ws, code, reason):
        self.closes.append(code)


def test_close_waits_for_the_peer_after_its_frame_is_out_not_send_timeout(ws_server):
    """Our close frame queued behind a large send: once it is out, the wait
    for the peer's close is the 5 s of a close, not send_timeout (60 s here)."""
    h = SendsThenCloses(8 << 20)
    live, url = ws_server(h, send_timeout=60)
    # A small window: the client's reads make the server's writes block
    # again after ws.close() (with a fast reader the rest could go at once).
    conn = RawConn(live.address, rcvbuf=4096, timeout=20)
    with conn:
        conn.send(upgrade_request())
        assert conn.read_head().status == 101
        while not conn.buf.endswith(b"\x03\xe8bye"):  # all of it, our close last; no answer
            assert conn.fill()
        conn.buf.clear()
        t0 = time.monotonic()
        conn.assert_closed()
        assert 4 < time.monotonic() - t0 < 20
    assert wait_for(lambda: h.closes == [1006], IO_TIMEOUT)


def test_unanswered_keepalive_ping_closes(ws_server):
    rec = Recorder()
    live, url = ws_server(rec, ws_ping_interval=0.2, ws_ping_timeout=0.3)
    conn, resp = open_raw(live)
    with conn:
        # Read the ping, never answer it: the server gives up.
        t0 = time.monotonic()
        fin, rsv, op, payload = read_frame(conn)
        assert op == PING
        expect_close(conn, 1001)
        assert time.monotonic() - t0 < 3
    # on_close hears what the peer was told.
    assert rec.wait_closes() == [(1001, "ping timeout")]

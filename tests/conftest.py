"""Fixtures and raw-socket helpers for the live server tests.

Every test talks to a real yimmo.Server over real sockets. The `server`
fixture runs Server.run() on a background thread, waits until the listening
socket accepts, and at teardown calls stop() and asserts that run() returned.
"""
import http.client
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

import yimmo

# Long enough for a loaded CI box, short enough that a hung engine fails fast.
IO_TIMEOUT = 5.0
JOIN_TIMEOUT = 5.0


def wait_for(predicate, timeout=IO_TIMEOUT, interval=0.005):
    """Poll predicate() until it is true; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def one_request(conn, method, path, body=None, headers=None):
    """Send one request on an http.client connection, read the whole
    response, close the connection: (response, body)."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


class LiveServer:
    """A yimmo.Server whose run() executes on a background thread."""

    def __init__(self, srv):
        self.srv = srv
        self.address = srv.address
        self.host, self.port = srv.address[0], srv.address[1]
        self.error = None
        self.returned = threading.Event()
        self.thread = threading.Thread(target=self._run, name="yimmo-run", daemon=True)

    def _run(self):
        try:
            self.srv.run()
        except BaseException as e:  # Reported at teardown, never lost.
            self.error = e
        finally:
            self.returned.set()

    def connect(self, timeout=IO_TIMEOUT, rcvbuf=None):
        """A RawConn to the server."""
        return RawConn((self.host, self.port), timeout=timeout, rcvbuf=rcvbuf)

    def http(self, timeout=IO_TIMEOUT):
        """An http.client connection to the server."""
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path="/", method="GET", body=None, headers=None):
        """One request on a fresh http.client connection: (response, body)."""
        return one_request(self.http(), method, path, body, headers)

    def wait_returned(self, timeout=JOIN_TIMEOUT):
        """Assert run() returns within timeout and did not raise."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() still running %.1fs after stop()" % timeout
        if self.error is not None:
            raise AssertionError("run() raised %r" % (self.error,)) from self.error

    def stop_and_wait(self, timeout=JOIN_TIMEOUT):
        if not self.returned.is_set():
            self.srv.stop()
        self.wait_returned(timeout)


def wait_accepting(live, timeout=IO_TIMEOUT):
    """Readiness check: the listening socket completes a TCP handshake."""
    deadline = time.monotonic() + timeout
    while True:
        if live.returned.is_set():
            raise AssertionError("run() returned before serving: %r" % (live.error,))
        try:
            with socket.create_connection((live.host, live.port), timeout=0.2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise AssertionError("server at %r never accepted: %r" % (live.address, e))
            live.returned.wait(0.01)


@pytest.fixture
def server():
    """Factory: server(handler, **kw) -> LiveServer running on a thread.

    Port 0 unless given. Teardown stops every server it started and asserts
    each run() returned cleanly within JOIN_TIMEOUT.
    """
    started = []

    def start(handler, **kw):
        if "sock" not in kw:
            kw.setdefault("port", 0)
        live = LiveServer(yimmo.Server(handler, **kw))
        started.append(live)
        live.thread.start()
        wait_accepting(live)
        return live

    yield start
    stop_servers(started)


class LogRecords(logging.Handler):
    """Keeps the records of the `yimmo` logger (thread-safe: Handler locks
    around emit)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def at(self, level):
        return [r for r in self.records if r.levelno == level]

    def errors(self):
        return [r for r in self.records if r.levelno >= logging.ERROR]

    def matching(self, text):
        return [r for r in self.records if text in r.getMessage()]


def stop_servers(started):
    """Teardown of the server fixtures: stop every LiveServer started, then
    raise the first failure (a run() that did not return cleanly)."""
    failures = []
    for live in started:
        try:
            live.stop_and_wait()
        except BaseException as e:
            failures.append(e)
    if failures:
        raise failures[0]


def assert_no_logged_errors(records):
    """No log record at ERROR or above (the `yimmo` logger's, as captured)."""
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert not errors, "unexpected yimmo errors: %s" % "; ".join(
        "%s (%r)" % (r.getMessage(), r.exc_info[1] if r.exc_info else None) for r in errors)


# ---------------------------------------------------------------------------
# Raw sockets: send exact bytes, read exact bytes, parse responses by hand.


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list = field(default_factory=list)  # [(lowercased name, value)]
    body: bytes = b""
    chunked: bool = False
    raw_body: bytes = b""  # the body as framed on the wire

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def has_token(self, name, token):
        """A comma-separated header (Connection, Transfer-Encoding) lists token."""
        token = token.lower()
        return any(t.strip().lower() == token
                   for v in self.header_all(name) for t in v.split(","))


class RawConn:
    """A client socket with a read buffer and an HTTP/1.x response reader.

    With data= and no address it parses bytes already received.
    A connection reset counts as end of stream.
    """

    def __init__(self, addr=None, timeout=IO_TIMEOUT, data=b"", rcvbuf=None, sock=None):
        if sock is None and addr is not None:
            family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            try:
                sock.connect(addr[:2])
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = bytearray(data)
        self.eof = sock is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()

    def reset(self):
        """Close with an RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def fill(self):
        """Read once more from the socket. False at end of stream."""
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(1 << 18)
        except ConnectionResetError:
            chunk = b""
        except socket.timeout:
            raise AssertionError("timed out waiting for the server; buffered: %r"
                                 % bytes(self.buf[:300])) from None
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_line(self):
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            start = max(0, len(self.buf) - 1)
            if not self.fill():
                raise EOFError("connection closed mid-line; buffered: %r" % bytes(self.buf[:300]))

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self.fill():
                raise EOFError("connection closed with %d of %d bytes" % (len(self.buf), n))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_to_eof(self):
        """Everything until the server closes; fails on timeout."""
        while self.fill():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def assert_closed(self):
        """The server closes the connection without sending anything more."""
        extra = self.read_to_eof()
        assert extra == b"", "expected the server to close, got %r" % extra[:300]

    def read_head(self):
        line = self.read_line()
        parts = line.split(b" ", 2)
        assert len(parts) >= 2 and parts[0] in (b"HTTP/1.1", b"HTTP/1.0"), \
            "bad status line %r" % line
        assert len(parts[1]) == 3 and parts[1].isdigit(), "bad status code in %r" % line
        resp = Response(parts[0].decode(), int(parts[1]),
                        parts[2].decode("latin-1") if len(parts) > 2 else "")
        while True:
            line = self.read_line()
            if not line:
                return resp
            name, sep, value = line.partition(b":")
            assert sep and name and name == name.strip(), "bad header line %r" % line
            resp.headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))

    def read_response(self, method="GET"):
        """Parse one response; 1xx responses are returned on their own."""
        resp = self.read_head()
        if resp.status < 200 or resp.status in (204, 304) or method == "HEAD":
            return resp
        if resp.has_token("transfer-encoding", "chunked"):
            resp.chunked = True
            body, raw = [], []
            while True:
                line = self.read_line()
                raw.append(line + b"\r\n")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:  # Trailer section, up to the empty line.
                        line = self.read_line()
                        raw.append(line + b"\r\n")
                        if not line:
                            break
                    break
                data = self.read_exact(size)
                body.append(data)
                crlf = self.read_exact(2)
                assert crlf == b"\r\n", "chunk not followed by CRLF: %r" % crlf
                raw += [data, crlf]
            resp.body = b"".join(body)
            resp.raw_body = b"".join(raw)
        elif resp.header("content-length") is not None:
            resp.body = resp.raw_body = self.read_exact(int(resp.header("content-length")))
        else:
            resp.body = resp.raw_body = self.read_to_eof()  # Close-delimited.
        return resp


def raw_request(addr, data, timeout=IO_TIMEOUT):
    """Send data on a new connection and return every byte until the server closes."""
    with RawConn(addr, timeout=timeout) as conn:
        conn.send(data)
        return conn.read_to_eof()


def parse_responses(data, methods=None):
    """Parse every response in data (bytes); methods[i] is the i-th request's method."""
    conn = RawConn(data=data)
    out = []
    while conn.buf:
        method = methods[len(out)] if methods else "GET"
        out.append(conn.read_response(method))
    return out


def get_request(path="/", version="HTTP/1.1", headers=()):
    """The bytes of a GET request with a Host header."""
    lines = ["GET %s %s" % (path, version), "Host: test"] + ["%s: %s" % h for h in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

"""Hardening over real sockets: strict parsing, limits, response safety,
timeouts and backpressure (RFC 9112 sections 2-7, 9, 11; RFC 9110).

Every rejection is checked against yimmo.Server and yimmo.WSGIServer (the
application on the loop thread and on worker threads): the exact status,
`Connection: close`, the connection closed once the answer is out, the
application never called, one INFO line on the `yimmo` logger naming the
reason, no leftover byte parsed as a request (a pipelined `GET /smuggled`
follows every bad request), and a normal request served on a new
connection afterwards.

Parser details (every error code, split reads) live in tests/parser_cases;
tests/test_server_errors.py and tests/test_limits.py keep their own cases
(native server, default limits, max_connections), which are not repeated.
"""
import gc
import logging
import os
import resource
import selectors
import socket
import threading
import time

import pytest

import yimmo
from conftest import (LiveServer, LogRecords, RawConn, assert_no_logged_errors, get_request,
                      parse_responses, stop_servers, wait_accepting, wait_for)

MiB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
SMUGGLED = get_request("/smuggled")

# name -> (server class, threads)
KINDS = {
    "native": ("native", 0),
    "wsgi": ("wsgi", 0),
    "wsgi-threads": ("wsgi", 2),
}

# Under the sanitizers and valgrind RSS says nothing (see test_leak.py).
rss_meaningful = pytest.mark.skipif(
    bool(os.environ.get("YIMMO_SANITIZED")), reason="RSS is not meaningful under sanitizers")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


# --- Servers ----------------------------------------------------------------


class Counting:
    """The default application: counts every call, reads the whole body as a
    real application would, answers 200 `ok <path>`."""

    def __init__(self):
        self.paths = []

    def native(self, ex):
        self.paths.append(ex.path)
        ex.body
        ex.respond(200, [("Content-Type", "text/plain")], b"ok " + ex.path.encode())

    def wsgi(self, environ, start_response):
        self.paths.append(environ["PATH_INFO"])
        environ["wsgi.input"].read()
        body = b"ok " + environ["PATH_INFO"].encode("latin-1")
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def serve():
    """Factory: serve(kind, app=None, **kw) -> LiveServer with .calls and .log.

    kind is a KINDS key; app is a native handler or a WSGI app (the counting
    one when None). Teardown stops every server, asserts run() returned, and
    fails on an ERROR record unless the test set live.expect_errors.
    """
    logger = logging.getLogger("yimmo")
    log = LogRecords()
    old_level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    started = []

    def start(kind, app=None, **kw):
        flavour, threads = KINDS[kind]
        counter = Counting()
        counting = app is None
        if app is None:
            app = counter.native if flavour == "native" else counter.wsgi
        kw.setdefault("port", 0)
        kw.setdefault("threads", threads)
        cls = yimmo.Server if flavour == "native" else yimmo.WSGIServer
        live = LiveServer(cls(app, **kw))
        live.kind, live.flavour = kind, flavour
        live.calls = counter.paths
        live.counting = counting
        live.log = log
        live.expect_errors = False
        started.append(live)
        live.thread.start()
        wait_accepting(live)
        return live

    try:
        yield start
        stop_servers(started)
        if not any(live.expect_errors for live in started):
            assert_no_logged_errors(log.records)
    finally:
        for live in started:
            if not live.returned.is_set():
                live.srv.stop()
        logger.removeHandler(log)
        logger.setLevel(old_level)


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


@pytest.fixture(params=["native", "wsgi"])
def kind2(request):
    """Server and WSGIServer, for the slow tests."""
    return request.param


@pytest.fixture(params=["wsgi", "wsgi-threads"])
def wsgi_kind(request):
    return request.param


def assert_serves_next(live, path="/after"):
    """A normal request on a new connection is answered, and only it reaches the app."""
    before = list(live.calls)
    with RawConn(live.address) as c:
        c.send(get_request(path, headers=[("Connection", "close")]))
        resp = c.read_response()
        c.assert_closed()
    assert (resp.status, resp.body) == (200, b"ok " + path.encode()), resp
    if live.counting:
        assert live.calls == before + [path], live.calls


def assert_app_untouched(live):
    """The application was never called and nothing was logged as an error
    (the caller set live.expect_errors so teardown does not report it twice)."""
    assert live.calls == [], "the application saw %r" % live.calls
    errors = [r.getMessage() for r in live.log.records if r.levelno >= logging.ERROR]
    assert not errors, "a client's bad request logged errors: %r" % errors


def assert_rejected(live, data, status, trailer=SMUGGLED, reason_log=True):
    """data (+ a pipelined request) gets exactly one `status` answer, then EOF."""
    live.expect_errors = True  # Checked here, once, rather than at teardown.
    with RawConn(live.address, timeout=2.0) as c:
        c.send(data + trailer)
        raw = c.read_to_eof()  # Fails on timeout: the server must close.
    assert raw, "closed without an answer to %r" % data[:200]
    responses = parse_responses(raw)
    assert [r.status for r in responses] == [status], \
        "sent %r\ngot %r" % (data[:300] + trailer, raw[:600])
    resp = responses[0]
    assert resp.has_token("connection", "close"), raw
    assert_app_untouched(live)
    if reason_log:
        # RFC-independent house rule: one INFO line naming status and reason.
        text = resp.body.decode("latin-1").strip()
        reason = text.split(": ", 1)[1] if ": " in text else text
        wait_for(lambda: live.log.at(logging.INFO))
        lines = [r.getMessage() for r in live.log.at(logging.INFO)
                 if r.getMessage().startswith("%d " % status)]
        assert len(lines) == 1 and reason and reason in lines[0], \
            (reason, [r.getMessage() for r in live.log.records])
    assert_serves_next(live)
    return resp


# --- Strict parsing: one rule per case --------------------------------------
# (name, request bytes, status). The RFC section is in the name's comment.

H = b"Host: h\r\n"


def post(*fields, body=b"", version=b"HTTP/1.1", host=True):
    head = b"POST /upload " + version + b"\r\n" + (H if host else b"")
    return head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def chunked(body):
    return post(b"Transfer-Encoding: chunked", body=body)


def get(line=b"GET / HTTP/1.1", *fields):
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


FRAMING = [
    # RFC 9112 6.3 item 3: Content-Length with Transfer-Encoding.
    ("cl-then-te", post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    ("te-then-cl", post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"), 400),
    ("cl-zero-with-te", post(b"Content-Length: 0", b"Transfer-Encoding: chunked",
                             body=b"0\r\n\r\n"), 400),
    # RFC 9112 6.3 item 5: several Content-Length fields or a list are invalid.
    ("two-cl-same", post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), 400),
    ("two-cl-different", post(b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"), 400),
    ("cl-list-same", post(b"Content-Length: 3, 3", body=b"abc"), 400),
    ("cl-list-different", post(b"Content-Length: 3, 4", body=b"abcd"), 400),
    # RFC 9110 8.6: Content-Length = 1*DIGIT.
    ("cl-letters", post(b"Content-Length: abc", body=b"abc"), 400),
    ("cl-hex", post(b"Content-Length: 0x3", body=b"abc"), 400),
    ("cl-empty", post(b"Content-Length: ", body=b""), 400),
    ("cl-plus", post(b"Content-Length: +3", body=b"abc"), 400),
    ("cl-minus", post(b"Content-Length: -3", body=b"abc"), 400),
    ("cl-inner-space", post(b"Content-Length: 1 2", body=b"abc"), 400),
    ("cl-decimal", post(b"Content-Length: 3.0", body=b"abc"), 400),
    ("cl-overflow-2e64", post(b"Content-Length: 18446744073709551616", body=b"abc"), 400),
    ("cl-overflow-long", post(b"Content-Length: " + b"9" * 40, body=b"abc"), 400),
    # RFC 9112 6.3 item 4: chunked must be the final coding, else 400.
    ("te-gzip-only", post(b"Transfer-Encoding: gzip", body=b"abc"), 400),
    ("te-chunked-then-gzip", post(b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"), 400),
    ("te-identity", post(b"Transfer-Encoding: identity", body=b"abc"), 400),
    # RFC 9112 6.1: a coding the server does not understand -> 501.
    ("te-unknown-then-chunked", post(b"Transfer-Encoding: x-foo, chunked", body=b"0\r\n\r\n"), 501),
    ("te-gzip-then-chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    ("te-unknown-across-fields", post(b"Transfer-Encoding: x-foo", b"Transfer-Encoding: chunked",
                                      body=b"0\r\n\r\n"), 501),
    # RFC 9112 7: chunked must not be applied twice.
    ("te-chunked-chunked", post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"), 400),
    ("te-chunked-twice-fields", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
                                     body=b"0\r\n\r\n"), 400),
    ("te-empty", post(b"Transfer-Encoding: ", body=b"0\r\n\r\n"), 400),
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
    ("te-http10", post(b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n",
                       version=b"HTTP/1.0", host=False), 400),
    ("te-and-cl-http10", post(b"Transfer-Encoding: chunked", b"Content-Length: 5",
                              body=b"0\r\n\r\n", version=b"HTTP/1.0"), 400),
]

CHUNKS = [
    # RFC 9112 7.1: chunk-size = 1*HEXDIG.
    ("size-not-hex", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("size-missing", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("size-leading-space", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    ("size-overflow-64bit", chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"), 400),
    ("size-overlong", chunked(b"f" * 64 + b"\r\nhello\r\n0\r\n\r\n"), 400),
    # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ).
    ("ext-empty-name", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), 400),
    ("ext-no-value", chunked(b"5;a=\r\nhello\r\n0\r\n\r\n"), 400),
    ("ext-value-space", chunked(b"5;a=b c\r\nhello\r\n0\r\n\r\n"), 400),
    ("ext-unterminated-quote", chunked(b"5;a=\"b\r\nhello\r\n0\r\n\r\n"), 400),
    ("ext-ctl-in-quote", chunked(b"5;a=\"b\x01\"\r\nhello\r\n0\r\n\r\n"), 400),
    ("ext-nul", chunked(b"5;a\x00=b\r\nhello\r\n0\r\n\r\n"), 400),
    ("ext-bad-name", chunked(b"5;a(b)=c\r\nhello\r\n0\r\n\r\n"), 400),
    ("size-then-space-no-ext", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    # RFC 9112 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF.
    ("data-without-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n"), 400),
    ("data-longer-than-size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400),
    ("data-then-bare-lf", chunked(b"5\r\nhello\n0\r\n\r\n"), 400),
    ("data-then-bare-cr", chunked(b"5\r\nhello\r0\r\n\r\n"), 400),
    ("size-line-bare-lf", chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    ("last-chunk-bare-lf", chunked(b"5\r\nhello\r\n0\n\r\n"), 400),
    # RFC 9112 7.1.2: trailer fields follow the field syntax.
    ("trailer-obs-fold", chunked(b"0\r\nX-T: a\r\n b\r\n\r\n"), 400),
    ("trailer-no-colon", chunked(b"0\r\nX-T\r\n\r\n"), 400),
    ("trailer-nul", chunked(b"0\r\nX-T: a\x00b\r\n\r\n"), 400),
]

FIELDS = [
    # RFC 9112 5.2: obs-fold is rejected in a request.
    ("obs-fold-space", get(b"GET / HTTP/1.1", b"Host: h", b"X-Long: a", b" b"), 400),
    ("obs-fold-tab", get(b"GET / HTTP/1.1", b"Host: h", b"X-Long: a", b"\tb"), 400),
    ("fold-after-request-line", get(b"GET / HTTP/1.1", b" Host: h"), 400),
    # RFC 9112 5.1: no whitespace between field name and colon.
    ("tab-before-colon", get(b"GET / HTTP/1.1", b"Host: h", b"X-A\t: y"), 400),
    ("space-before-colon-other", get(b"GET / HTTP/1.1", b"Host: h", b"Content-Length : 0"), 400),
    # RFC 9112 2.2: a bare CR is rejected.
    ("bare-cr-in-value", get(b"GET / HTTP/1.1", b"Host: h", b"X: a\rb"), 400),
    ("bare-cr-ends-request-line", b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400),
    ("bare-cr-ends-field", b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400),
    # RFC 9112 2.2: yimmo does not accept a bare LF as a line terminator.
    ("bare-lf-ends-request-line", b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400),
    ("bare-lf-ends-field", b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400),
    ("bare-lf-ends-head", b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400),
    ("bare-lf-in-value", get(b"GET / HTTP/1.1", b"Host: h", b"X: a\nb"), 400),
    # RFC 9110 5.5: field-value has no CTLs (NUL, other C0, DEL).
    ("nul-in-value", get(b"GET / HTTP/1.1", b"Host: h", b"X: a\x00b"), 400),
    ("soh-in-value", get(b"GET / HTTP/1.1", b"Host: h", b"X: a\x01b"), 400),
    ("esc-first-in-value", get(b"GET / HTTP/1.1", b"Host: h", b"X: \x1b"), 400),
    ("del-in-value", get(b"GET / HTTP/1.1", b"Host: h", b"X: a\x7f"), 400),
    ("vt-in-value", get(b"GET / HTTP/1.1", b"Host: h", b"X: a\x0bb"), 400),
    ("nul-in-host", get(b"GET / HTTP/1.1", b"Host: h\x00.evil"), 400),
    # RFC 9110 5.1, 5.6.2: field-name = token.
    ("name-empty", get(b"GET / HTTP/1.1", b"Host: h", b": v"), 400),
    ("name-paren", get(b"GET / HTTP/1.1", b"Host: h", b"X(a): v"), 400),
    ("name-at", get(b"GET / HTTP/1.1", b"Host: h", b"X@y: v"), 400),
    ("name-comma", get(b"GET / HTTP/1.1", b"Host: h", b"X,y: v"), 400),
    ("name-quote", get(b"GET / HTTP/1.1", b"Host: h", b"X\"y: v"), 400),
    ("name-slash", get(b"GET / HTTP/1.1", b"Host: h", b"X/y: v"), 400),
    ("name-non-ascii", get(b"GET / HTTP/1.1", b"Host: h", b"X-\xc3\xa9: v"), 400),
    ("name-nul", get(b"GET / HTTP/1.1", b"Host: h", b"X\x00: v"), 400),
    ("name-del", get(b"GET / HTTP/1.1", b"Host: h", b"X\x7f: v"), 400),
    # RFC 9110 9.1, 5.6.2: method = token.
    ("method-paren", get(b"G(T / HTTP/1.1", b"Host: h"), 400),
    ("method-brace", get(b"G{T / HTTP/1.1", b"Host: h"), 400),
    ("method-colon", get(b"G:T / HTTP/1.1", b"Host: h"), 400),
    ("method-quote", get(b"G\"T / HTTP/1.1", b"Host: h"), 400),
    ("method-non-ascii", get(b"G\xc3\x89T / HTTP/1.1", b"Host: h"), 400),
    ("method-nul", get(b"G\x00T / HTTP/1.1", b"Host: h"), 400),
    ("method-del", get(b"GET\x7f / HTTP/1.1", b"Host: h"), 400),
    ("method-leading-space", get(b" GET / HTTP/1.1", b"Host: h"), 400),
    ("method-tab-separator", get(b"GET\t/ HTTP/1.1", b"Host: h"), 400),
    # RFC 9112 3.2: Host is required in HTTP/1.1, at most once, and valid.
    ("host-missing-with-others", get(b"POST / HTTP/1.1", b"Content-Length: 0"), 400),
    ("host-twice-same", get(b"GET / HTTP/1.1", b"Host: h", b"Host: h"), 400),
    ("host-twice-different", get(b"GET / HTTP/1.1", b"Host: h", b"Host: evil"), 400),
    ("host-twice-http10", get(b"GET / HTTP/1.0", b"Host: h", b"Host: evil"), 400),
    ("host-list", get(b"GET / HTTP/1.1", b"Host: h, evil"), 400),
    ("host-with-space", get(b"GET / HTTP/1.1", b"Host: h evil"), 400),
    ("host-with-slash", get(b"GET / HTTP/1.1", b"Host: h/evil"), 400),
    ("host-with-userinfo", get(b"GET / HTTP/1.1", b"Host: user@h"), 400),
    ("host-bad-port", get(b"GET / HTTP/1.1", b"Host: h:port"), 400),
]

TARGETS = [
    # RFC 9112 3.2: request-target forms; anything else is 400.
    ("target-space-inside", get(b"GET /a b HTTP/1.1", b"Host: h"), 400),
    ("target-two-spaces-before", get(b"GET  / HTTP/1.1", b"Host: h"), 400),
    ("target-empty", get(b"GET  HTTP/1.1", b"Host: h"), 400),
    ("target-ctl", get(b"GET /a\x01b HTTP/1.1", b"Host: h"), 400),
    ("target-nul", get(b"GET /a?b=\x00 HTTP/1.1", b"Host: h"), 400),
    ("target-tab", get(b"GET /a\tb HTTP/1.1", b"Host: h"), 400),
    ("target-del", get(b"GET /a\x7f HTTP/1.1", b"Host: h"), 400),
    ("target-non-ascii", get(b"GET /caf\xc3\xa9 HTTP/1.1", b"Host: h"), 400),
    ("target-fragment", get(b"GET /a#frag HTTP/1.1", b"Host: h"), 400),
    ("target-relative", get(b"GET a/b HTTP/1.1", b"Host: h"), 400),
    ("target-dot-relative", get(b"GET ../etc/passwd HTTP/1.1", b"Host: h"), 400),
    ("target-query-only", get(b"GET ?a=b HTTP/1.1", b"Host: h"), 400),
    ("asterisk-with-get", get(b"GET * HTTP/1.1", b"Host: h"), 400),
    ("asterisk-with-more", get(b"OPTIONS *a HTTP/1.1", b"Host: h"), 400),
    ("authority-form-without-connect", get(b"GET h:80 HTTP/1.1", b"Host: h"), 400),
    ("absolute-form-userinfo", get(b"GET http://u@h/ HTTP/1.1", b"Host: h"), 400),
    ("absolute-form-empty-host", get(b"GET http:/// HTTP/1.1", b"Host: h"), 400),
]

VERSIONS = [
    # RFC 9110 15.6.6: a well-formed version the server does not support -> 505.
    ("http-2.0", get(b"GET / HTTP/2.0", b"Host: h"), 505),
    ("http-3.0", get(b"GET / HTTP/3.0", b"Host: h"), 505),
    ("http-0.9-spelled", get(b"GET / HTTP/0.9", b"Host: h"), 505),
    ("http-9.9", get(b"GET / HTTP/9.9", b"Host: h"), 505),
    # RFC 9112 2.3, 3: HTTP-version = "HTTP/" DIGIT "." DIGIT; else an invalid request-line -> 400.
    ("http-0.9-simple-request", b"GET /\r\n\r\n", 400),
    ("http-0.9-simple-request-no-blank", b"GET /\r\n", 400),
    ("version-lowercase", get(b"GET / http/1.1", b"Host: h"), 400),
    ("version-two-digit-minor", get(b"GET / HTTP/1.10", b"Host: h"), 400),
    ("version-two-digit-major", get(b"GET / HTTP/11.1", b"Host: h"), 400),
    ("version-no-minor", get(b"GET / HTTP/1", b"Host: h"), 400),
    ("version-http2-short", get(b"GET / HTTP/2", b"Host: h"), 400),
    ("version-trailing-space", get(b"GET / HTTP/1.1 ", b"Host: h"), 400),
    ("version-garbage", get(b"GET / FOO/1.1", b"Host: h"), 400),
    ("version-binary", get(b"GET / \x16\x03\x01\x00", b"Host: h"), 400),
    ("version-suffix", get(b"GET / HTTP/1.1x", b"Host: h"), 400),
]

RULES = FRAMING + CHUNKS + FIELDS + TARGETS + VERSIONS


@pytest.mark.parametrize("data, status", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_bad_request_is_rejected_closed_and_not_smuggled(serve, kind, data, status):
    live = serve(kind)
    assert_rejected(live, data, status)


def test_rule_names_are_unique():
    names = [r[0] for r in RULES]
    assert len(names) == len(set(names))


def test_bad_request_after_a_good_one_is_not_answered_as_two(serve, kind):
    """A good request is answered, then the smuggling attempt behind it is
    rejected and nothing after it is parsed (RFC 9112 6.3 item 3, 11.2)."""
    live = serve(kind)
    attack = post(b"Content-Length: 4", b"Transfer-Encoding: chunked",
                  body=b"0\r\n\r\n" + SMUGGLED)
    with RawConn(live.address) as c:
        c.send(get_request("/first") + attack)
        raw = c.read_to_eof()
    rs = parse_responses(raw)
    assert [r.status for r in rs] == [200, 400], raw
    assert rs[1].has_token("connection", "close")
    assert live.calls == ["/first"]
    assert_serves_next(live)


def test_request_bodies_that_look_like_requests_are_bodies(serve, kind):
    """Positive control for the smuggling cases: well-framed bodies holding
    request text are passed on as bodies and keep the connection."""
    seen = []

    def native(ex):
        seen.append((ex.path, ex.body))
        ex.respond(200, [], b"ok")

    def wsgi(environ, start_response):
        seen.append((environ["PATH_INFO"], environ["wsgi.input"].read()))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    live = serve(kind, native if KINDS[kind][0] == "native" else wsgi)
    with RawConn(live.address) as c:
        c.send(post(b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED)
               + chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED))
               + get_request("/last", headers=[("Connection", "close")]))
        raw = c.read_to_eof()
    assert [r.status for r in parse_responses(raw)] == [200, 200, 200], raw
    assert seen == [("/upload", SMUGGLED), ("/upload", SMUGGLED), ("/last", b"")]


# --- Limits, with small settings ----------------------------------------------

LIMITS = dict(max_request_line=64, max_header_size=64, max_header_bytes=400, max_headers=8,
              max_body_size=1000)


def test_limits_at_their_values_are_served(serve, kind):
    """Positive control: requests exactly at every limit get through."""
    live = serve(kind, **LIMITS)
    line = b"GET /" + b"a" * (64 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 64
    field = b"X-F: " + b"v" * (64 - 5)
    with RawConn(live.address) as c:
        c.send(get(line, b"Host: h") + get(b"GET /f HTTP/1.1", b"Host: h", field)
               + get(b"GET /n HTTP/1.1", b"Host: h", *[b"X-%d: v" % i for i in range(7)])
               + get(b"GET /last HTTP/1.1", b"Host: h", b"Connection: close"))
        raw = c.read_to_eof()
    assert [r.status for r in parse_responses(raw)] == [200] * 4, raw


LIMIT_RULES = [
    # RFC 9112 3: a request-line longer than the server parses -> 414.
    ("request-line", get(b"GET /" + b"a" * 100 + b" HTTP/1.1", b"Host: h"), 414),
    # RFC 9112 3: a method longer than any implemented -> 501.
    ("request-line-long-method", get(b"M" * 100 + b" / HTTP/1.1", b"Host: h"), 501),
    ("request-line-no-end", b"GET /" + b"a" * 100, 414),
    # RFC 6585 5: one field too large -> 431.
    ("one-field", get(b"GET / HTTP/1.1", b"Host: h", b"X-Big: " + b"v" * 100), 431),
    ("one-field-long-name", get(b"GET / HTTP/1.1", b"Host: h", b"X" * 100 + b": v"), 431),
    ("one-field-no-end", b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 100, 431),
    # RFC 6585 5: the head as a whole too large -> 431.
    ("header-bytes", get(b"GET / HTTP/1.1", b"Host: h",
                         *[b"X-%d: %s" % (i, b"v" * 52) for i in range(7)]), 431),
    # RFC 6585 5: too many fields -> 431.
    ("header-count", get(b"GET / HTTP/1.1", b"Host: h", *[b"X-%d: v" % i for i in range(8)]), 431),
    # RFC 9110 15.5.14: body too large -> 413, before reading it.
    ("content-length", post(b"Content-Length: 1001", body=b"x" * 1001), 413),
    ("content-length-huge", post(b"Content-Length: 9999999999999", body=b"x" * 100), 413),
    ("chunk-size-over-max", chunked(b"3e9\r\n" + b"x" * 100), 413),
    ("chunk-size-2e64-1", chunked(b"ffffffffffffffff\r\n" + b"x" * 100), 413),
]


@pytest.mark.parametrize("data, status", [r[1:] for r in LIMIT_RULES],
                         ids=[r[0] for r in LIMIT_RULES])
def test_limit_is_enforced(serve, kind, data, status):
    live = serve(kind, **LIMITS)
    assert_rejected(live, data, status)


def test_body_over_limit_gets_413_before_100_continue(serve, kind):
    """RFC 9110 10.1.1: a server that will reject the body answers with the
    final status instead of 100 Continue; nothing is read as a request."""
    live = serve(kind, **LIMITS)
    live.expect_errors = True  # assert_app_untouched checks.
    with RawConn(live.address) as c:
        c.send(post(b"Content-Length: 1001", b"Expect: 100-continue"))
        resp = c.read_response()  # Before any body byte is sent.
        assert resp.status == 413, resp
        assert resp.has_token("connection", "close")
        try:
            c.send(b"x" * 1001 + SMUGGLED)  # The client goes ahead anyway.
        except OSError:
            pass
        rest = c.read_to_eof()
    assert rest == b"", "more than the 413 was sent: %r" % rest[:300]
    assert_app_untouched(live)
    assert_serves_next(live)


def test_chunked_body_over_limit_gets_413_while_it_arrives(serve, kind):
    """The 413 comes once the decoded chunks pass max_body_size, before the
    body ends (the last chunk is never sent)."""
    live = serve(kind, **LIMITS)
    live.expect_errors = True  # assert_app_untouched checks.
    with RawConn(live.address) as c:
        c.send(chunked(b"258\r\n" + b"x" * 600 + b"\r\n"))  # 600 of 1000: fine so far.
        c.send(b"258\r\n" + b"y" * 600 + b"\r\n")           # 1200: over.
        resp = c.read_response()
        assert resp.status == 413, resp
        assert resp.has_token("connection", "close")
        c.assert_closed()
    assert_app_untouched(live)
    assert_serves_next(live)


def test_chunked_body_within_limit_is_served(serve, kind):
    """Positive control: 1000 decoded bytes in small chunks pass a 1000 limit
    even though the chunked framing is larger."""
    sizes = []

    def native(ex):
        sizes.append(len(ex.body))
        ex.respond(200, [], b"ok")

    def wsgi(environ, start_response):
        sizes.append(len(environ["wsgi.input"].read()))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    live = serve(kind, native if KINDS[kind][0] == "native" else wsgi, **LIMITS)
    body = b"".join(b"a;x=y\r\n" + b"z" * 10 + b"\r\n" for _ in range(100)) + b"0\r\n\r\n"
    with RawConn(live.address) as c:
        c.send(chunked(body))
        resp = c.read_response()
    assert resp.status == 200 and sizes == [1000], (resp, sizes)


# --- Response safety ----------------------------------------------------------

BAD_CHARS = {"cr": "\r", "lf": "\n", "crlf": "\r\n", "nul": "\0"}


def injected_headers(where, ch):
    if where == "name":
        return [("X-A" + ch + "Injected", "1")]
    return [("X-A", "a" + ch + "Injected: 1")]


@pytest.mark.parametrize("ch", list(BAD_CHARS.values()), ids=list(BAD_CHARS))
@pytest.mark.parametrize("where", ["name", "value"])
@pytest.mark.parametrize("call", ["respond", "start", "respond-bytes", "respond-dict"])
def test_native_header_with_cr_lf_nul_is_refused(serve, call, where, ch):
    raised = []
    headers = injected_headers(where, ch)
    if call == "respond-bytes":
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    if call == "respond-dict":
        headers = dict(headers)

    def handler(ex):
        try:
            if call == "start":
                ex.start(200, headers)
                ex.end()
            else:
                ex.respond(200, headers, b"bad")
        except Exception as e:
            raised.append(e)
        ex.respond(200, [], b"fine")  # Nothing was sent by the refused call.

    live = serve("native", handler)
    with RawConn(live.address) as c:
        c.send(get_request("/", headers=[("Connection", "close")]))
        raw = c.read_to_eof()
    assert b"Injected" not in raw and b"bad" not in raw, raw
    (resp,) = parse_responses(raw)
    assert (resp.status, resp.body) == (200, b"fine")
    assert len(raised) == 1 and isinstance(raised[0], ValueError), raised


def test_native_reason_phrase_injection_is_impossible(serve):
    """respond() takes an int status; a str status is a TypeError, not a line."""
    raised = []

    def handler(ex):
        try:
            ex.respond("200 OK\r\nInjected: 1", [], b"bad")
        except Exception as e:
            raised.append(e)
        ex.respond(200, [], b"fine")

    live = serve("native", handler)
    with RawConn(live.address) as c:
        c.send(get_request("/", headers=[("Connection", "close")]))
        raw = c.read_to_eof()
    assert b"Injected" not in raw
    assert len(raised) == 1 and isinstance(raised[0], TypeError)


WSGI_INJECTIONS = {
    "status-crlf": ("200 OK\r\nInjected: 1", [("Content-Length", "3")]),
    "status-lf": ("200 OK\nInjected: 1", [("Content-Length", "3")]),
    "status-nul": ("200 OK\0Injected", [("Content-Length", "3")]),
}
for _where in ("name", "value"):
    for _k, _ch in BAD_CHARS.items():
        WSGI_INJECTIONS["%s-%s" % (_where, _k)] = (
            "200 OK", [("Content-Length", "3")] + injected_headers(_where, _ch))


@pytest.mark.parametrize("status, headers", list(WSGI_INJECTIONS.values()),
                         ids=list(WSGI_INJECTIONS))
def test_wsgi_header_with_cr_lf_nul_is_refused(serve, wsgi_kind, status, headers):
    """PEP 3333: the server checks the headers when start_response is called,
    so the app sees the error; uncaught, it becomes a 500. Nothing is written."""
    raised = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/":
            start_response("200 OK", [("Content-Length", "9")])
            return [b"ok " + environ["PATH_INFO"].encode()]
        try:
            start_response(status, headers)
        except Exception as e:
            raised.append(e)
            raise
        return [b"bad"]

    live = serve(wsgi_kind, app)
    live.expect_errors = True
    with RawConn(live.address) as c:
        c.send(get_request("/", headers=[("Connection", "close")]))
        raw = c.read_to_eof()
    assert b"Injected" not in raw and not raw.endswith(b"bad"), raw
    (resp,) = parse_responses(raw)
    assert resp.status == 500, raw
    assert len(raised) == 1 and isinstance(raised[0], ValueError), raised
    assert_serves_next(live)


# --- Timeouts -----------------------------------------------------------------


@pytest.fixture
def many_fds():
    """Room for 1,000 client sockets and their 1,000 server ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, want))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def timed_request(live, path="/probe"):
    """(seconds, response) for one request on a new connection."""
    t0 = time.monotonic()
    with RawConn(live.address) as c:
        c.send(get_request(path, headers=[("Connection", "close")]))
        resp = c.read_response()
    return time.monotonic() - t0, resp


def assert_timeout_answer(data):
    """A timed-out request gets a 408 with Connection: close, or a bare close."""
    if data:
        (resp,) = parse_responses(data)
        assert resp.status == 408 and resp.has_token("connection", "close"), data


SLOWLORIS = 1000


def test_slowloris_does_not_starve_others_and_is_cut_off(serve, kind2, many_fds):
    """RFC 9112 9.5 and the issue's item 4: a thousand heads trickling one byte
    at a time are each closed about header_timeout after their first byte,
    while a normal client is served promptly."""
    header_timeout = 1.0
    live = serve(kind2, header_timeout=header_timeout, keepalive_timeout=30.0, backlog=2048)
    sel = selectors.DefaultSelector()
    socks, first_byte, closed, answers = [], {}, {}, {}
    try:
        for i in range(SLOWLORIS):
            s = socket.create_connection((live.host, live.port), timeout=5)
            s.setblocking(False)
            s.send(b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Slow: ")
            first_byte[s] = time.monotonic()
            socks.append(s)
            sel.register(s, selectors.EVENT_READ)
        # The server is busy with 1,000 connections; a normal client is not.
        probes = [timed_request(live, "/probe%d" % i) for i in range(3)]
        for elapsed, resp in probes:
            assert resp.status == 200 and elapsed < 0.5, probes
        deadline = max(first_byte.values()) + header_timeout + 1.5
        next_trickle = time.monotonic()
        while len(closed) < len(socks) and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_trickle:  # One byte per open connection every 0.2 s.
                for s in socks:
                    if s not in closed:
                        try:
                            s.send(b"a")
                        except (BlockingIOError, OSError):
                            pass
                next_trickle = now + 0.2
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if data:
                    answers[s] = answers.get(s, b"") + data
                else:
                    closed[s] = time.monotonic()
                    sel.unregister(s)
        late = [closed[s] - first_byte[s] for s in closed
                if closed[s] - first_byte[s] > header_timeout + 1.0]
        assert len(closed) == len(socks), "%d of %d slowloris connections still open" % (
            len(socks) - len(closed), len(socks))
        assert not late, "%d closed late (max %.2fs)" % (len(late), max(late))
        early = [closed[s] - first_byte[s] for s in closed
                 if closed[s] - first_byte[s] < header_timeout * 0.9]
        assert not early, "closed before header_timeout: %.2fs" % min(early)
        for data in answers.values():
            assert_timeout_answer(data)
        assert live.calls == ["/probe0", "/probe1", "/probe2"]
        assert wait_for(lambda: live.srv.connections == 0), live.srv.connections
        assert_serves_next(live)
    finally:
        sel.close()
        for s in socks:
            s.close()


def test_header_timeout_runs_from_the_first_byte(serve, kind):
    """A head trickled byte by byte inside the request line is still cut off."""
    live = serve(kind, header_timeout=0.5, keepalive_timeout=30.0)
    live.expect_errors = True  # assert_app_untouched checks.
    with RawConn(live.address) as c:
        t0 = time.monotonic()
        c.sock.settimeout(0.1)
        data = b""
        for b in b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":
            try:
                c.send(bytes([b]))
                got = c.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                got = b""
            if not got:
                break
            data += got
            break  # An answer came: read the rest below.
        c.sock.settimeout(5)
        c.buf += data
        data = c.read_to_eof()
        elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed <= 1.5, elapsed
    assert_timeout_answer(data)
    assert_app_untouched(live)
    assert_serves_next(live)


def test_idle_new_connection_is_closed(serve, kind):
    """A connection that never sends a byte is not kept forever."""
    live = serve(kind, header_timeout=0.5, keepalive_timeout=0.5)
    with RawConn(live.address) as c:
        t0 = time.monotonic()
        data = c.read_to_eof()
        elapsed = time.monotonic() - t0
    assert data == b"" and elapsed <= 1.5, (data, elapsed)
    assert_serves_next(live)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_idle_timeout_is_408(serve, kind, framing):
    live = serve(kind, body_timeout=0.5)
    live.expect_errors = True  # assert_app_untouched checks.
    with RawConn(live.address) as c:
        if framing == "chunked":
            c.send(chunked(b"5\r\nhello\r\n"))
        else:
            c.send(post(b"Content-Length: 100", body=b"x" * 10))
        t0 = time.monotonic()
        data = c.read_to_eof()
        elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed <= 1.5, elapsed
    (resp,) = parse_responses(data)
    assert resp.status == 408 and resp.has_token("connection", "close"), data
    assert_app_untouched(live)
    assert_serves_next(live)


def test_keepalive_idle_timeout_closes(serve, kind):
    live = serve(kind, keepalive_timeout=0.5)
    with RawConn(live.address) as c:
        c.send(get_request("/one"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        data = c.read_to_eof()
        elapsed = time.monotonic() - t0
    assert data == b"", "an idle keep-alive connection is closed silently: %r" % data
    assert 0.45 <= elapsed <= 1.5, elapsed
    assert live.calls == ["/one"]
    assert_serves_next(live)


# --- Backpressure -------------------------------------------------------------


def wait_stalled(counter, settle=0.3, timeout=8.0):
    """Wait until counter() stops changing for `settle` seconds; its value."""
    deadline = time.monotonic() + timeout
    last, since = counter(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = counter()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last


def send_what_fits(sock, data, timeout=2.0):
    """Send data until the peer stops reading; the number of bytes sent."""
    sock.settimeout(0.3)
    sent = 0
    deadline = time.monotonic() + timeout
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(data[sent:sent + 65536])
        except socket.timeout:
            break
    return sent


BIG = b"b" * 65536


@rss_meaningful
def test_pipelining_client_that_never_reads_is_bounded(serve, kind):
    count = {"n": 0}

    def native(ex):
        count["n"] += 1
        ex.respond(200, [], BIG)

    def wsgi(environ, start_response):
        count["n"] += 1
        start_response("200 OK", [("Content-Length", str(len(BIG)))])
        return [BIG]

    live = serve(kind, native if KINDS[kind][0] == "native" else wsgi)
    assert live.get("/warm")[0].status == 200
    gc.collect()
    base = rss()
    pipeline = get_request("/big") * 2000
    c = RawConn(live.address, rcvbuf=4096)
    try:
        send_what_fits(c.sock, pipeline)
        served = wait_stalled(lambda: count["n"])
        growth = rss() - base
        assert served < 2000, "all 2,000 responses were produced for a client that never reads"
        assert growth < 32 * MiB, "RSS grew %.1f MiB for %d queued responses" % (
            growth / MiB, served)
        elapsed, resp = timed_request(live, "/other")
        assert resp.status == 200 and elapsed < 0.5, elapsed
    finally:
        c.reset()
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections
    assert live.get("/again")[0].status == 200


@rss_meaningful
def test_chunk_framing_does_not_pile_up_in_memory(serve, kind):
    """One body byte per chunk, each with a 4000-byte extension: the raw
    bytes once stayed in the input buffer until the body was complete (256
    MiB of buffer for 64 KiB of body, kept while the upload stalled)."""
    live = serve(kind)
    assert live.get("/warm")[0].status == 200
    gc.collect()
    base = rss()
    batch = (b"1;e=" + b"a" * 3990 + b"\r\nX\r\n") * 256
    with RawConn(live.address) as c:
        c.send(chunked(b""))
        for _ in range(64):     # 16,384 chunks: 64 MiB on the wire, 16 KiB of body
            c.send(batch)
        growth = rss() - base
        c.send(b"0\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200 and resp.body == b"ok /upload"
    assert growth < 24 * MiB, "RSS grew %.1f MiB for a 16 KiB body" % (growth / MiB)


class Stream:
    """A WSGI iterable producing 64 KiB blocks; records close()."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.produced = 0
        self.closed = threading.Event()

    def __iter__(self):
        for _ in range(self.blocks):
            self.produced += 1
            yield BIG

    def close(self):
        self.closed.set()


@rss_meaningful
@pytest.mark.parametrize("threads", [0, 2], ids=["loop", "threads"])
def test_wsgi_app_faster_than_reader_is_paused_and_closed(serve, threads):
    """The producer is paused at the high-water mark while a slow reader
    drains; a disconnect mid-response still calls close()."""
    streams = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/stream":
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        s = Stream(4096)  # 256 MiB if nothing pauses it.
        streams.append(s)
        return s

    live = serve("wsgi", app, threads=threads)
    assert live.get("/warm")[0].status == 200
    gc.collect()
    base = rss()
    c = RawConn(live.address, rcvbuf=16384)
    try:
        c.send(get_request("/stream"))
        head = c.read_head()
        assert head.status == 200
        received = len(c.buf)
        c.buf.clear()
        c.sock.settimeout(0.05)
        for _ in range(20):  # A slow reader: at most 16 KiB per 20 ms.
            try:
                received += len(c.sock.recv(16384))
            except socket.timeout:
                pass
            time.sleep(0.02)
        assert wait_for(lambda: streams), "the app was not called"
        produced = wait_stalled(lambda: streams[0].produced) * len(BIG)
        growth = rss() - base
        assert produced - received < 16 * MiB, "%d MiB produced, %d KiB read" % (
            produced // MiB, received // 1024)
        assert growth < 32 * MiB, "RSS grew %.1f MiB" % (growth / MiB)
        elapsed, resp = timed_request(live, "/other")
        assert resp.status == 200 and elapsed < 0.5, elapsed
    finally:
        c.reset()
    assert streams[0].closed.wait(5), "close() not called after the client vanished"
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections
    assert live.get("/again")[0].status == 200


class Upload:
    """A WSGI iterable that reads the request body as it is iterated."""

    def __init__(self, environ, start_response):
        self.input = environ["wsgi.input"]
        self.length = int(environ["CONTENT_LENGTH"])
        self.got = 0
        self.started = threading.Event()
        self.closed = threading.Event()
        self.error = None
        start_response("200 OK", [("Content-Type", "text/plain")])

    def __iter__(self):
        try:
            while self.got < self.length:
                data = self.input.read(min(65536, self.length - self.got))
                if not data:
                    break
                self.got += len(data)
                self.started.set()
        except Exception as e:
            self.error = e
            raise
        yield b"%d" % self.got

    def close(self):
        self.closed.set()


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("threads", [2], ids=["threads"])   # on the loop, uploads are read first
def test_wsgi_client_gone_mid_upload_calls_close(serve, threads, how):
    uploads = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/upload":
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        u = Upload(environ, start_response)
        uploads.append(u)
        return u

    live = serve("wsgi", app, threads=threads)
    live.expect_errors = True  # A failed body read may be logged.
    c = RawConn(live.address)
    c.send(post(b"Content-Length: %d" % (8 * MiB), body=b"u" * (512 * 1024)))
    assert wait_for(lambda: uploads and uploads[0].started.is_set()), "the app never read"
    if how == "rst":
        c.reset()
    else:
        c.close()
    assert uploads[0].closed.wait(5), "close() not called after the client vanished mid-upload"
    assert uploads[0].got < 8 * MiB
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections
    assert live.get("/again")[0].status == 200


@pytest.mark.parametrize("threads", [0, 2], ids=["loop", "threads"])
def test_wsgi_client_gone_before_response_calls_close(serve, threads):
    """The response is ready but the client has gone: close() still runs."""
    streams = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        s = Stream(64)
        streams.append(s)
        return s

    live = serve("wsgi", app, threads=threads)
    c = RawConn(live.address, rcvbuf=4096)
    c.send(get_request("/stream"))
    c.reset()
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections
    # The app may or may not have been called for a request whose client
    # was already gone; when it was, its iterable was closed.
    for s in streams:
        assert s.closed.wait(5), "close() not called"
    assert live.get("/again")[0].status == 200

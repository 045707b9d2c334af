"""yimmo.parsers.build_wsgi_environ: the WSGIServer's environ from bytes alone.

The function runs the server's own environ code (csrc/py/wsgi.c) on a request
parsed from bytes; the fuzz target wsgi_environ (fuzz/checks.py
check_environ) holds it to PEP 3333. Here: it gives what a live server gives
for the same bytes, it refuses what the parser refuses with the same error,
its arguments are checked, and it leaks nothing.
"""
import gc
import io
import sys

import pytest

import yimmo.wsgi
from conftest import RawConn
from wsgi_conftest import wsgi_server  # noqa: F401  (fixture)
from yimmo.parsers import ParseError, build_wsgi_environ, parse_http_request

# Compared between the live server and build_wsgi_environ: everything but the
# stream objects and the thread flag (the server runs with worker threads too).
NOT_COMPARED = {"wsgi.input", "wsgi.errors", "wsgi.multithread"}

REQUESTS = [
    b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n",
    b"GET /app/caf%C3%A9/%2F?q HTTP/1.1\r\nHost: [::1]\r\nX-A: 1\r\nx-a: 2\r\n"
    b"Cookie: a=1\r\nCookie: b=2\r\nX_Spoof: 1\r\nConnection: close\r\n\r\n",
    b"POST /apples HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Connection: close\r\n\r\nhello",
    b"POST /app HTTP/1.1\r\nHost: h:\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"GET http://target.example:81/p?q HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    # RFC 9112 3.2.2: absolute-form without a path still names the server
    # (this fell back to Host before; fuzz/regressions/wsgi_environ).
    b"GET http://target.example?q HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    b"GET http://target.example HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h:9\r\nConnection: close\r\n\r\n",
    b"GET /x HTTP/1.0\r\n\r\n",
]


def capture(store):
    def app(environ, start_response):
        env = dict(environ)
        env["body"] = environ["wsgi.input"].read()
        store.append(env)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    return app


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_same_environ_as_the_live_server(wsgi_server, scheme):  # noqa: F811
    seen = []
    live = wsgi_server(capture(seen), validate=False, url_scheme=scheme, script_name="/app")
    for data in REQUESTS:
        with RawConn(live.address) as c:
            remote = c.sock.getsockname()[:2]
            c.send(data)
            assert c.read_response().status == 200
        got = seen[-1]
        env = build_wsgi_environ(data, script_name="/app", url_scheme=scheme, remote=remote,
                                 server=("127.0.0.1", str(live.port)))
        assert env["wsgi.input"].read() == got.pop("body")
        assert isinstance(env["wsgi.input"], io.BytesIO)
        assert env["wsgi.errors"] is sys.stderr
        assert env["wsgi.multithread"] is False
        assert ({k: v for k, v in env.items() if k not in NOT_COMPARED}
                == {k: v for k, v in got.items() if k not in NOT_COMPARED}), data


@pytest.mark.parametrize("target, name, port", [
    ("http://target.example?q", "target.example", "80"),
    ("http://target.example", "target.example", "80"),
    ("http://target.example:81", "target.example", "81"),
    ("http://[::1]:82?x", "[::1]", "82"),
    ("http://t/p", "t", "80"),
    ("/p", "other", "80"),
])
def test_absolute_target_names_the_server(target, name, port):
    data = b"GET %s HTTP/1.1\r\nHost: other\r\n\r\n" % target.encode()
    env = build_wsgi_environ(data)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)
    assert env["RAW_URI"] == target
    # RFC 9112 3.2.2: Host is ignored, also in HTTP_HOST, which frameworks
    # read first: a proxy routing on the target and the app agree.
    assert env["HTTP_HOST"] == ("other" if target.startswith("/") else target[7:].split("?")[0].split("/")[0])


@pytest.mark.parametrize("host, port", [("h:", "80"), ("[::1]:", "80"), ("h:8", "8"), ("h", "80")])
def test_an_empty_port_is_the_default(host, port):
    # RFC 3986 3.2.3: "a:" is "a" with the scheme's default port.
    env = build_wsgi_environ(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
    assert env["SERVER_PORT"] == port
    env = build_wsgi_environ(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode(), url_scheme="https")
    assert env["SERVER_PORT"] == ("443" if port == "80" else port)


def test_defaults():
    env = build_wsgi_environ(b"GET /p%41th?a=%41 HTTP/1.0\r\n\r\n")
    assert env["PATH_INFO"] == "/pAth" and env["QUERY_STRING"] == "a=%41"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "8000")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", "12345")
    assert env["SCRIPT_NAME"] == "" and env["wsgi.url_scheme"] == "http"
    assert env["wsgi.file_wrapper"] is yimmo.wsgi.FileWrapper
    assert env["wsgi.input"].read() == b""
    assert (env["wsgi.multiprocess"], env["wsgi.run_once"], env["wsgi.input_terminated"]) == (
        False, False, True)


def test_body_follows_the_framing():
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcNEXT"
    env = build_wsgi_environ(data)
    assert env["wsgi.input"].read() == b"abc" and env["CONTENT_LENGTH"] == "3"
    env = build_wsgi_environ(bytearray(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
                                       b"\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"))
    assert env["wsgi.input"].read() == b"abc" and "CONTENT_LENGTH" not in env
    assert env["HTTP_TRANSFER_ENCODING"] == "chunked"


@pytest.mark.parametrize("data", [
    b"",
    b"GET / HTTP/1.1\r\nHost: h\r\n",                                   # incomplete head
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabc",      # incomplete body
    b"GET / HTTP/1.1\r\n\r\n",                                          # no Host
    b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_refuses_what_the_parser_refuses(data):
    with pytest.raises(ParseError) as want:
        parse_http_request(data)
    with pytest.raises(ValueError) as got:
        build_wsgi_environ(data)
    assert type(got.value) is ParseError
    assert got.value.args == want.value.args


@pytest.mark.parametrize("kw, exc", [
    ({"script_name": b"/x"}, TypeError),
    ({"url_scheme": None}, TypeError),
    ({"remote": ("h", "1")}, TypeError),
    ({"remote": ("h", 1, 2)}, TypeError),
    ({"remote": ["h", 1]}, TypeError),
    ({"remote": ("h", -1)}, ValueError),
    ({"remote": ("h", 65536)}, ValueError),
    ({"remote": ("h", 1 << 80)}, OverflowError),
    ({"remote": ("\u20ac", 1)}, UnicodeEncodeError),
    ({"server": ("h", 80)}, TypeError),
    ({"server": ("\u20ac", "80")}, UnicodeEncodeError),
])
def test_arguments_are_checked(kw, exc):
    with pytest.raises(exc):
        build_wsgi_environ(b"GET / HTTP/1.0\r\n\r\n", **kw)
    with pytest.raises(TypeError):
        build_wsgi_environ(b"GET / HTTP/1.0\r\n\r\n", "/positional")
    with pytest.raises(TypeError):
        build_wsgi_environ("GET / HTTP/1.0\r\n\r\n")


def test_no_reference_leaks():
    data = REQUESTS[1]
    objs = [yimmo.wsgi.FileWrapper, sys.stderr, io.BytesIO]
    for _ in range(10):
        build_wsgi_environ(data)
    gc.collect()
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(1000):
        build_wsgi_environ(data, script_name="/app", remote=("::1", 1), server=("h", "1"))
        with pytest.raises(ParseError):
            build_wsgi_environ(data[:-2])
    gc.collect()
    assert [sys.getrefcount(o) for o in objs] == before

"""PEP 3333 served by yimmo.WSGIServer: environ, wsgi.input, start_response, bodies.

Every test talks to a real WSGIServer over real sockets. Applications run under
wsgiref.validate.validator unless a test needs something the validator itself
forbids (read() without a size, a bad status on purpose); a validator warning
is an error (STRICT_WARNINGS) and any yimmo error log fails the test unless it
says it expects one.
"""
import hashlib
import io
import os
import socket
import sys
import threading
import time

import pytest

import yimmo
import yimmo.wsgi
from conftest import (IO_TIMEOUT, RawConn, get_request, open_fds, parse_responses, raw_request,
                      wait_for)
from wsgi_conftest import STRICT_WARNINGS, wsgi_server  # noqa: F401  (fixture)

pytestmark = STRICT_WARNINGS

KiB = 1024
MiB = 1024 * KiB


def text(start_response, body, status="200 OK", headers=()):
    """Answer body (bytes) as text/plain; the return value for the app."""
    start_response(status, [("Content-Type", "text/plain")] + list(headers))
    return [body]


def capture(store):
    """An application that keeps a copy of each environ it sees."""
    def app(environ, start_response):
        store.append(dict(environ))
        return text(start_response, b"ok")
    return app


def one_environ(live, data):
    """Send data (one request that closes), return the environ the app saw."""
    seen = live.seen
    before = len(seen)
    resp = parse_responses(raw_request(live.address, data))
    assert [r.status for r in resp] == [200], resp
    assert len(seen) == before + 1
    return seen[-1]


@pytest.fixture
def env_server(wsgi_server):
    """A validated server whose app records environs in live.seen."""
    def start(**kw):
        seen = []
        live = wsgi_server(capture(seen), **kw)
        live.seen = seen
        return live
    return start


def request(path="/", method="GET", headers=(), body=b"", version="HTTP/1.1", host="test"):
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    lines += ["%s: %s" % h for h in headers]
    if version == "HTTP/1.1":
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(data, size):
    """data framed as chunks of size bytes, with the last-chunk."""
    out = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
           for i in range(0, len(data), size)]
    return b"".join(out) + b"0\r\n\r\n"


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- The environ --------------------------------------------------------------


def test_environ_has_every_pep3333_key_with_the_right_values(env_server):
    live = env_server()
    with RawConn(live.address) as c:
        client_addr, client_port = c.sock.getsockname()[:2]
        c.send(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n")
        assert c.read_response().status == 200
    env = live.seen[-1]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/a/b"
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["RAW_URI"] == "/a/b?x=1&y=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "8080")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (client_addr, str(client_port))
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["wsgi.version"] == (1, 0) and type(env["wsgi.version"]) is tuple
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is (live.threads > 1)
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.file_wrapper"] is yimmo.wsgi.FileWrapper
    for name in ("write", "writelines", "flush"):
        assert callable(getattr(env["wsgi.errors"], name))
    for name in ("read", "readline", "readlines", "__iter__"):
        assert callable(getattr(env["wsgi.input"], name))
    assert "CONTENT_TYPE" not in env and "CONTENT_LENGTH" not in env
    for key, value in env.items():
        if "." not in key:
            assert type(value) is str, (key, value)


@pytest.mark.parametrize("target, path_info, query", [
    ("/caf%C3%A9", "/caf\xc3\xa9", ""),            # UTF-8 bytes carried as latin-1
    ("/a%20b/%2Fc", "/a b//c", ""),
    ("/%e9t%C3%A9?q=%C3%A9", "/\xe9t\xc3\xa9", "q=%C3%A9"),  # QUERY_STRING stays encoded
    ("/100%", "/100%", ""),                        # incomplete escapes stay as sent
    ("/%4", "/%4", ""),
    ("/%zz/x", "/%zz/x", ""),
    ("/a?", "/a", ""),
    ("/?a=b?c", "/", "a=b?c"),
    ("/" + "%41" * 1500 + "/%C3%A9", "/" + "A" * 1500 + "/\xc3\xa9", ""),  # past any stack buffer
])
def test_path_info_is_percent_decoded_latin1(env_server, target, path_info, query):
    live = env_server()
    env = one_environ(live, request(target))
    assert env["PATH_INFO"] == path_info
    assert env["QUERY_STRING"] == query
    assert env["RAW_URI"] == target


def test_path_info_round_trips_to_utf8_as_pep3333_says(env_server):
    live = env_server()
    env = one_environ(live, request("/caf%C3%A9/%E2%82%AC"))
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/€"


@pytest.mark.parametrize("host, scheme, name, port", [
    ("example.com:8080", "http", "example.com", "8080"),
    ("example.com", "http", "example.com", "80"),
    ("example.com", "https", "example.com", "443"),
    ("[::1]:9000", "http", "[::1]", "9000"),
    ("[::1]", "https", "[::1]", "443"),
])
def test_server_name_and_port_come_from_host(env_server, host, scheme, name, port):
    live = env_server(url_scheme=scheme)
    env = one_environ(live, request(host=host))
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)
    assert env["wsgi.url_scheme"] == scheme


def test_server_name_and_port_without_host_are_the_bound_address(env_server):
    live = env_server()
    env = one_environ(live, request(version="HTTP/1.0", host=None))
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(live.port))
    assert "HTTP_HOST" not in env


def test_server_port_without_host_is_the_socket_the_request_came_in_on(env_server):
    # CGI (RFC 3875 4.1.15): SERVER_PORT is the port the request was received on.
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        live = env_server(sock=socks)
        for s in socks:
            port = s.getsockname()[1]
            resp = parse_responses(raw_request(("127.0.0.1", port), request(version="HTTP/1.0", host=None)))
            assert resp[0].status == 200
            env = live.seen[-1]
            assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(port))
    finally:
        for s in socks:
            s.close()


def test_remote_addr_over_ipv6(env_server):
    try:
        probe = socket.create_server(("::1", 0), family=socket.AF_INET6)
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    live = env_server(host="::1")
    with RawConn(live.address) as c:
        port = c.sock.getsockname()[1]
        c.send(request(version="HTTP/1.0", host=None))
        assert c.read_response().status == 200
    env = live.seen[-1]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("::1", str(port))
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("::1", str(live.port))


def test_script_name_is_given_and_stripped_from_path_info(env_server):
    # PEP 3333 URL reconstruction: SCRIPT_NAME + PATH_INFO is the request path.
    live = env_server(script_name="/app")
    env = one_environ(live, request("/app/x/y?z=1"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/app", "/x/y", "z=1")
    env = one_environ(live, request("/app"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "")


@pytest.mark.parametrize("path", ["/other", "/appx", "/", "/ap"])
def test_a_path_outside_script_name_gets_an_empty_script_name(env_server, path):
    # Not under the mount point: SCRIPT_NAME "/app" would make the app
    # rebuild /app/other for a request of /other (or /app/appx for /appx).
    live = env_server(script_name="/app")
    env = one_environ(live, request(path))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", path)


def test_multiprocess_is_as_given(env_server):
    live = env_server(multiprocess=True)
    env = one_environ(live, request())
    assert env["wsgi.multiprocess"] is True


@pytest.mark.parametrize("allow, headers, scheme, port", [
    # gunicorn's secure_scheme_headers, from a trusted peer (this test's 127.0.0.1).
    ("127.0.0.1", [("X-Forwarded-Proto", "https")], "https", "443"),
    ("127.0.0.0/8", [("X-Forwarded-Proto", "HTTPS")], "https", "443"),
    ("*", [("X-Forwarded-Ssl", "on")], "https", "443"),
    ("::1, 127.0.0.1", [("X-Forwarded-Protocol", "ssl")], "https", "443"),
    ("127.0.0.1", [("X-Forwarded-Proto", "http")], "http", "80"),
    ("127.0.0.1", [], "http", "80"),
    # Proxies that disagree: never a claim of https.
    ("127.0.0.1", [("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "off")], "http", "80"),
    # An untrusted peer's header is only a header.
    ("10.0.0.0/8, ::1", [("X-Forwarded-Proto", "https")], "http", "80"),
    (None, [("X-Forwarded-Proto", "https")], "http", "80"),
])
def test_forwarded_scheme_from_trusted_proxies(env_server, allow, headers, scheme, port):
    live = env_server(forwarded_allow_ips=allow)
    env = one_environ(live, request(headers=headers))
    assert (env["wsgi.url_scheme"], env["SERVER_PORT"]) == (scheme, port)
    if headers:
        assert env["HTTP_" + headers[0][0].upper().replace("-", "_")] == headers[0][1]
    env = one_environ(live, request())      # the next request starts over
    assert env["wsgi.url_scheme"] == "http"


@pytest.mark.parametrize("allow", ["localhost", "1.2.3.4/33", "10.0.0.1/", ["127.0.0.1", 1], 5])
def test_bad_forwarded_allow_ips(allow):
    with pytest.raises((ValueError, TypeError), match="forwarded_allow_ips"):
        yimmo.WSGIServer(lambda e, s: [], port=0, forwarded_allow_ips=allow)


@pytest.mark.parametrize("allow", [
    "10.0.0.1", "10.0.0.0/8", "10.0.0.0/032", "::1", "fe80::/10", "::ffff:10.0.0.1", "*",
    "10.0.0.1, ::1", "fe80::1%eth0", "10.0.0.0/255.0.0.0", "10.0.0.0/0.255.255.255", "10.0.0.0/+8",
    "10.0.0.0/\u0668", "010.0.0.1", "1.2.3", "::1/129", "10.0.0.0/33",
])
def test_the_cli_and_the_server_read_forwarded_allow_ips_alike(allow):
    """--forwarded-allow-ips is checked when the CLI reads it; what passes
    there must not stop a worker from booting, and the reverse."""
    from yimmo import config
    try:
        config.load(["hello", "--forwarded-allow-ips", allow], environ={})
        cli = True
    except config.ConfigError:
        cli = False
    try:
        yimmo.WSGIServer(lambda e, s: [], host="127.0.0.1", port=0, forwarded_allow_ips=allow)
        server = True
    except ValueError:
        server = False
    assert cli == server


def test_wsgi_errors_is_the_stream_given(env_server):
    class Stream:
        def write(self, s):
            pass

        def flush(self):
            pass

        def writelines(self, lines):
            pass

    stream = Stream()
    live = env_server(errors=stream, validate=False)    # wsgiref would wrap it
    assert one_environ(live, request())["wsgi.errors"] is stream


@pytest.mark.parametrize("threads", [0, 1, 4])
def test_multithread_is_true_with_worker_threads(env_server, threads):
    # One worker thread never runs two calls at once (gunicorn: threads > 1).
    live = env_server(threads=threads)
    env = one_environ(live, request())
    assert env["wsgi.multithread"] is (threads > 1)


def test_content_type_and_length_only_when_sent(env_server):
    live = env_server()
    env = one_environ(live, request("/p", "POST", [("Content-Type", "application/x-www-form-urlencoded"),
                                                  ("Content-Length", "3")], b"a=1"))
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("application/x-www-form-urlencoded", "3")
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    env = one_environ(live, request("/p", "POST", [("Transfer-Encoding", "chunked")], chunked(b"abc", 2)))
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    env = one_environ(live, request("/p", "GET"))
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env


def test_http_headers_map_to_http_keys(env_server):
    live = env_server()
    env = one_environ(live, request(headers=[
        ("X-Multi", "one"), ("x-multi", "two"), ("X-MULTI", "three"),
        ("Cookie", "a=1"), ("Cookie", "b=2"),
        ("Accept", "text/html"), ("Accept", "application/json"),
        ("X-Auth", "good"), ("X_Auth", "evil"), ("X_Only_Underscores", "evil"),
        ("X-Latin", "caf\xe9"), ("User-Agent", "yimmo-test/1.0"), ("X-Empty", ""),
    ]))
    assert env["HTTP_X_MULTI"] == "one,two,three"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_ACCEPT"] == "text/html,application/json"
    # A name with '_' would pose as the '-' one once mapped: it is dropped.
    assert env["HTTP_X_AUTH"] == "good"
    assert "HTTP_X_ONLY_UNDERSCORES" not in env
    assert env["HTTP_X_LATIN"] == "caf\xe9"
    assert env["HTTP_USER_AGENT"] == "yimmo-test/1.0"
    assert env["HTTP_X_EMPTY"] == ""
    assert env["HTTP_CONNECTION"] == "close"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_request_method(env_server, method):
    live = env_server()
    with RawConn(live.address) as c:
        c.send(request("/m", method, [("Content-Length", "0")]))
        assert c.read_response(method).status == 200
    assert live.seen[-1]["REQUEST_METHOD"] == method


def test_validator_warnings_fail_the_request(wsgi_server):
    # The harness is not vacuous: an unknown method draws a WSGIWarning from
    # the validator, which STRICT_WARNINGS turns into an error in the app.
    live = wsgi_server(lambda e, s: text(s, b"ok"), expect_errors=True)
    resp, _ = live.request("PROPFIND", "/")
    assert resp.status == 500
    assert any("Unknown REQUEST_METHOD" in str(r.exc_info[1]) for r in live.errors if r.exc_info)


# --- wsgi.input ------------------------------------------------------------------

BODY = b"line1\nline2\nline3\nx\n\nlast"


def body_requests(path, body=BODY):
    """The same body sent with Content-Length and chunked at several splits."""
    yield request(path, "POST", [("Content-Length", str(len(body)))], body)
    for size in (1, 4, len(body)):
        yield request(path, "POST", [("Transfer-Encoding", "chunked")], chunked(body, size))


def input_app(reader):
    def app(environ, start_response):
        out = reader(environ["wsgi.input"])
        return text(start_response, repr(out).encode())
    return app


def assert_reads(live, path, expected):
    for data in body_requests(path):
        (resp,) = parse_responses(raw_request(live.address, data))
        assert (resp.status, resp.body) == (200, repr(expected).encode()), data[:80]


def test_input_read_with_sizes(wsgi_server):
    live = wsgi_server(input_app(lambda i: [i.read(0), i.read(2), i.read(5), i.read(1000),
                                            i.read(10), i.read(1)]))
    assert_reads(live, "/", [b"", b"li", b"ne1\nl", BODY[7:], b"", b""])


def test_input_read_without_size_reads_everything(wsgi_server):
    # The validator insists on read(size): read() is checked unvalidated.
    live = wsgi_server(input_app(lambda i: [i.read(3), i.read(), i.read(), i.read(None)]),
                       validate=False)
    assert_reads(live, "/", [b"lin", BODY[3:], b"", b""])


def test_input_readline(wsgi_server):
    live = wsgi_server(input_app(lambda i: [i.readline(), i.readline(3), i.readline(0),
                                            i.readline(), i.readline(100), i.readline(),
                                            i.readline(), i.readline(), i.readline()]))
    assert_reads(live, "/", [b"line1\n", b"lin", b"", b"e2\n", b"line3\n", b"x\n", b"\n",
                             b"last", b""])


def test_input_readlines_and_hint(wsgi_server):
    live = wsgi_server(input_app(lambda i: i.readlines()))
    assert_reads(live, "/", [b"line1\n", b"line2\n", b"line3\n", b"x\n", b"\n", b"last"])
    live = wsgi_server(input_app(lambda i: [i.readlines(8), i.readline(), i.readlines()]))
    assert_reads(live, "/", [[b"line1\n", b"line2\n"], b"line3\n", [b"x\n", b"\n", b"last"]])


def test_input_iteration(wsgi_server):
    live = wsgi_server(input_app(lambda i: list(i)))
    assert_reads(live, "/", [b"line1\n", b"line2\n", b"line3\n", b"x\n", b"\n", b"last"])


def test_input_empty_body(wsgi_server):
    live = wsgi_server(input_app(lambda i: [i.read(10), i.readline(), i.readlines(), list(i)]))
    for data in (request("/", "POST", [("Content-Length", "0")]),
                 request("/", "POST", [("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
                 request("/", "GET")):
        (resp,) = parse_responses(raw_request(live.address, data))
        assert resp.body == repr([b"", b"", [], []]).encode()


def test_input_long_lines_across_buffer_refills(wsgi_server):
    # Lines longer than the body buffer, in a body far larger than it.
    lines = [bytes([65 + i % 26]) * (3000 + 977 * i) + b"\n" for i in range(40)]
    body = b"".join(lines)

    def app(environ, start_response):
        got = list(environ["wsgi.input"])
        ok = got == lines
        return text(start_response, b"same" if ok else repr([len(x) for x in got]).encode())

    live = wsgi_server(app, body_buffer_size=4096)
    for data in (request("/", "POST", [("Content-Length", str(len(body)))], body),
                 request("/", "POST", [("Transfer-Encoding", "chunked")], chunked(body, 1000))):
        (resp,) = parse_responses(raw_request(live.address, data))
        assert (resp.status, resp.body) == (200, b"same")


# On the loop thread a body is read before the app runs (see below).
@pytest.mark.parametrize("wsgi_server", [2], indirect=True, ids=["threads"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_input_streams_the_body_as_it_arrives(wsgi_server, framing):
    """The app reads the first bytes while the client still holds the rest."""
    first_read = threading.Event()
    total = 200 * KiB

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        head = inp.read(10)
        first_read.set()
        n = len(head)
        while True:
            data = inp.read(8192)
            if not data:
                break
            n += len(data)
        return text(start_response, b"%d %s" % (n, head))

    live = wsgi_server(app, body_buffer_size=16 * KiB)
    part1, part2 = b"0123456789" + b"a" * (50 * KiB - 10), b"b" * (total - 50 * KiB)
    with RawConn(live.address) as c:
        if framing == "chunked":
            c.send(request("/", "POST", [("Transfer-Encoding", "chunked")]) + chunked(part1, 4096)[:-5])
        else:
            c.send(request("/", "POST", [("Content-Length", str(total))]) + part1)
        assert first_read.wait(IO_TIMEOUT), "the app did not get the body before all of it was sent"
        c.send(chunked(part2, 4096) if framing == "chunked" else part2)
        resp = c.read_response()
    assert (resp.status, resp.body) == (200, b"%d 0123456789" % total)


@pytest.mark.parametrize("wsgi_server", [0], indirect=True, ids=["loop"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_on_the_loop_a_slow_upload_does_not_hold_other_clients(wsgi_server, framing):
    """With the app on the loop thread (threads=0, the default), waiting in
    wsgi.input for a slow client would stop every other client (once, for
    up to the body timeout). The body is read first, the part beyond
    body_buffer_size spooled to a temporary file, and the app then reads
    all of it, whole and in order."""
    got = []

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        if environ["PATH_INFO"] == "/other":
            return text(start_response, b"other")
        first = inp.readline()
        data = first + inp.read(1000) + b"".join(iter(lambda: inp.read(65536), b""))
        got.append(data)
        return text(start_response, b"%d" % len(data))

    total = 300 * KiB
    body = b"first line\n" + os.urandom(total - 11)
    live = wsgi_server(app, body_buffer_size=16 * KiB)
    fds = open_fds()
    wire = chunked(body, 7000) if framing == "chunked" else body
    framing_header = (("Transfer-Encoding", "chunked") if framing == "chunked"
                      else ("Content-Length", str(total)))
    with RawConn(live.address) as c:
        c.send(request("/", "POST", [framing_header]) + wire[:100 * KiB])
        # The upload stalls part way: others are served meanwhile.
        for _ in range(3):
            assert live.request("GET", "/other")[1] == b"other"
        assert got == []
        c.send(wire[100 * KiB:])
        resp = c.read_response()
    assert (resp.status, resp.body) == (200, b"%d" % total)
    assert got == [body]
    # The spool file is closed with its exchange.
    assert wait_for(lambda: open_fds() <= fds), (open_fds(), fds)


@pytest.mark.parametrize("wsgi_server", [0], indirect=True, ids=["loop"])
def test_on_the_loop_a_spooled_body_is_read_back_a_block_at_a_time(wsgi_server):
    """Lines of a spooled body come from the block already read back: each
    readline() once read 64 KiB from the file again (half a million reads
    here, and a worker killed by its watchdog for a larger body)."""
    def syscr():
        with open("/proc/self/io") as f:
            return int(next(l for l in f if l.startswith("syscr")).split()[1])

    counts = []

    def app(environ, start_response):
        before = syscr()
        lines = list(environ["wsgi.input"])
        counts.append(syscr() - before)
        return text(start_response, b"%d %d" % (len(lines), sum(map(len, lines))))

    live = wsgi_server(app, validate=False)
    body = b"x\n" * (512 * KiB)
    with RawConn(live.address) as c:
        c.send(request("/", "POST", [("Content-Length", str(len(body)))]) + body)
        resp = c.read_response()
    assert resp.body == b"%d %d" % (512 * KiB, len(body))
    assert counts[0] < 1000, "%d reads for 1 MiB read back" % counts[0]


@pytest.mark.parametrize("wsgi_server", [0], indirect=True, ids=["loop"])
def test_on_the_loop_a_body_that_cannot_be_spooled_is_503(wsgi_server, monkeypatch, tmp_path):
    """The spool lives in $TMPDIR: when it cannot be written the client is
    told (503), the error is logged, and the server goes on."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    live = wsgi_server(input_app(lambda i: i.read(100)), body_buffer_size=4 * KiB,
                       expect_errors=True)
    with RawConn(live.address) as c:
        # Part of it: more than the buffer arrived, the rest is to come.
        c.send(request("/", "POST", [("Content-Length", str(64 * KiB))]) + b"x" * (16 * KiB))
        resp = c.read_response()
        assert resp.status == 503 and b"could not store the request body" in resp.body
    assert any("spooling a request body" in r.getMessage() for r in live.wait_errors(1))
    assert live.request("GET", "/")[0].status == 200


@pytest.mark.parametrize("wsgi_server", [0], indirect=True, ids=["loop"])
def test_on_the_loop_expect_100_continue_is_answered_at_once(wsgi_server):
    """On the loop thread the body is read before the app runs, so 100
    Continue goes out once the head is read (RFC 9110 10.1.1 lets a server
    send it before the application decides); a client that then sends
    nothing holds its own connection only, and gets 408 in time."""
    live = wsgi_server(input_app(lambda i: i.read(100)), body_timeout=0.5)
    expect = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with RawConn(live.address) as c:
        c.send(expect)
        assert c.read_head().status == 100
        assert live.request("GET", "/")[0].status == 200
        c.send(b"hello")
        resp = c.read_response()
        assert (resp.status, resp.body) == (200, repr(b"hello").encode())
    with RawConn(live.address) as c:
        c.send(expect)
        assert c.read_head().status == 100
        assert c.read_response().status == 408


# On the loop thread a body is read before the app runs (see below).
@pytest.mark.parametrize("wsgi_server", [2], indirect=True, ids=["threads"])
def test_expect_100_continue_is_sent_on_the_first_read(wsgi_server):
    entered, go = threading.Event(), threading.Event()

    def app(environ, start_response):
        entered.set()
        go.wait(IO_TIMEOUT)
        body = environ["wsgi.input"].read(100)
        return text(start_response, body)

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert entered.wait(IO_TIMEOUT)
        # Nothing yet: the app has not asked for the body.
        c.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.sock.recv(100)
        c.sock.settimeout(IO_TIMEOUT)
        go.set()
        interim = c.read_head()
        assert (interim.status, interim.version) == (100, "HTTP/1.1")
        c.send(b"hello")
        resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"hello")


# On the loop thread a body is read before the app runs (see below).
@pytest.mark.parametrize("wsgi_server", [2], indirect=True, ids=["threads"])
def test_no_100_continue_when_the_app_never_reads(wsgi_server):
    live = wsgi_server(lambda e, s: text(s, b"no thanks", "417 Expectation Failed"))
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        resp = c.read_response()
        assert (resp.status, resp.body) == (417, b"no thanks")


def test_no_100_continue_for_http10(wsgi_server):
    live = wsgi_server(input_app(lambda i: i.read(100)))
    data = raw_request(live.address, b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
    assert b"100 Continue" not in data
    (resp,) = parse_responses(data)
    assert resp.body == repr(b"hello").encode()


@pytest.mark.skipif(bool(os.environ.get("YIMMO_SANITIZED")),
                    reason="RSS is not meaningful under sanitizers (quarantine)")
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_64mib_upload_streams_in_bounded_memory(wsgi_server, framing):
    """A 1 GiB-class upload scaled down: 64 MiB through wsgi.input in 64 KiB reads."""
    total, block = 64 * MiB, 64 * KiB
    stats = {}

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        h = hashlib.sha256()
        peak = rss_bytes()
        n = biggest = 0
        while True:
            data = inp.read(block)
            if not data:
                break
            n += len(data)
            biggest = max(biggest, len(data))
            h.update(data)
            peak = max(peak, rss_bytes())
        stats.update(peak=peak, biggest=biggest)
        return text(start_response, b"%d %s" % (n, h.hexdigest().encode()))

    live = wsgi_server(app)
    pattern = os.urandom(block)
    h = hashlib.sha256()
    # The baseline is taken before a byte is sent: a server that buffered the
    # body before calling the app would show it here, not hide it.
    base = rss_bytes()
    with RawConn(live.address, timeout=30) as c:
        if framing == "chunked":
            c.send(request("/up", "POST", [("Transfer-Encoding", "chunked")]))
        else:
            c.send(request("/up", "POST", [("Content-Length", str(total))]))
        for i in range(total // block):
            piece = i.to_bytes(4, "big") + pattern[4:]
            h.update(piece)
            if framing == "chunked":
                c.send(b"%x\r\n" % block)
                c.send(piece)
                c.send(b"\r\n")
            else:
                c.send(piece)
        if framing == "chunked":
            c.send(b"0\r\n\r\n")
        resp = c.read_response()
    assert (resp.status, resp.body) == (200, b"%d %s" % (total, h.hexdigest().encode()))
    assert stats["biggest"] <= block
    growth = stats["peak"] - base
    assert growth < 16 * MiB, "RSS grew by %.1f MiB for a 64 MiB upload" % (growth / MiB)


# --- start_response --------------------------------------------------------------


def probe_app(call):
    """An app that runs call(start_response) and answers with what it raised."""
    def app(environ, start_response):
        try:
            call(start_response)
        except Exception as e:
            return text(start_response, type(e).__name__.encode())
        return text(start_response, b"no error")
    return app


@pytest.mark.parametrize("status, error", [
    ("200", "ValueError"),
    ("200OK", "ValueError"),
    ("OK 200", "ValueError"),
    ("2000 OK", "ValueError"),
    ("20x OK", "ValueError"),
    ("099 Low", "ValueError"),
    ("100 Continue", "ValueError"),  # an interim status is not the app's to send
    ("200 OK\r\nX-Evil: 1", "ValueError"),
    ("200 OK\nX-Evil: 1", "ValueError"),
    ("200 O\x00K", "ValueError"),
    ("200 O\x01K", "ValueError"),   # RFC 9112 4: no control character but HTAB
    ("200 O\x7fK", "ValueError"),
    ("200 O\x1b[31mK", "ValueError"),
    ("200 \u20ac", "ValueError"),
    (b"200 OK", "TypeError"),
    (200, "TypeError"),
    (None, "TypeError"),
])
def test_start_response_rejects_bad_status(wsgi_server, status, error):
    # Unvalidated: the validator would reject these before yimmo sees them.
    live = wsgi_server(probe_app(lambda sr: sr(status, [])), validate=False)
    data = raw_request(live.address, request())
    (resp,) = parse_responses(data)
    assert (resp.status, resp.body) == (200, error.encode())
    assert b"X-Evil" not in data


@pytest.mark.parametrize("status", ["200 OK", "404 Not Found", "299 Custom Thing", "404 No Such Widget",
                                    "418 I'm a teapot", "200 caf\xe9"])
def test_start_response_status_line_is_sent_as_given(wsgi_server, status):
    live = wsgi_server(lambda e, s: text(s, b"x", status), validate=False)
    data = raw_request(live.address, request())
    assert data.startswith(b"HTTP/1.1 " + status.encode("latin-1") + b"\r\n")


@pytest.mark.parametrize("headers, error", [
    ({"X-A": "1"}, "TypeError"),
    ((("X-A", "1"),), "TypeError"),
    ([["X-A", "1"]], "TypeError"),
    ([("X-A", "1", "2")], "TypeError"),
    ([(b"X-A", "1")], "TypeError"),
    ([("X-A", b"1")], "TypeError"),
    ([("X-A", 1)], "TypeError"),
    ([("X-A", "a\r\nX-Evil: 1")], "ValueError"),
    ([("X-A", "a\nX-Evil: 1")], "ValueError"),
    ([("X-A", "a\rX-Evil: 1")], "ValueError"),
    ([("X-A", "a\x00X-Evil")], "ValueError"),
    ([("X-A", "a\x01X-Evil")], "ValueError"),     # RFC 9110 5.5: no control character
    ([("X-A", "a\x7fX-Evil")], "ValueError"),     # but HTAB in a field value
    ([("X-A", "\x1b]8;;X-Evil")], "ValueError"),
    ([("Content-Length", "abc"), ("X-Evil", "1")], "ValueError"),
    ([("Content-Length", "-1"), ("X-Evil", "1")], "ValueError"),
    ([("Content-Length", "1 1"), ("X-Evil", "1")], "ValueError"),
    ([("Content-Length", ""), ("X-Evil", "1")], "ValueError"),
    ([("Content-Length", "1"), ("Content-Length", "1"), ("X-Evil", "1")], "ValueError"),
    ([("X-Evil\r\nX-B", "1")], "ValueError"),
    ([("X-Evil: 1\r\nX-B", "1")], "ValueError"),
    ([("X Evil", "1")], "ValueError"),
    ([("X-Evil:", "1")], "ValueError"),
    ([("", "1")], "ValueError"),
    ([("X-Evil-\u20ac", "1")], "ValueError"),
    ([("X-A", "\u20ac X-Evil")], "ValueError"),
    ([("Transfer-Encoding", "chunked")], "ValueError"),
    ([("transfer-encoding", "identity")], "ValueError"),
    ([("X-Ok", "fine"), ("X-A", "a\r\n\r\nX-Evil")], "ValueError"),
])
def test_start_response_rejects_bad_headers_and_never_writes_them(wsgi_server, headers, error):
    live = wsgi_server(probe_app(lambda sr: sr("200 OK", headers)), validate=False)
    data = raw_request(live.address, request())
    (resp,) = parse_responses(data)
    assert (resp.status, resp.body) == (200, error.encode())
    assert b"Evil" not in data and b"X-Ok" not in data


@pytest.mark.parametrize("status", ["200 Tab\tin reason", "200 OK"])
def test_htab_is_allowed_in_the_reason_and_in_values(wsgi_server, status):
    live = wsgi_server(lambda e, s: text(s, b"x", status, headers=[("X-A", "a\tb")]), validate=False)
    data = raw_request(live.address, request())
    assert data.startswith(b"HTTP/1.1 " + status.encode() + b"\r\n") and b"\r\nX-A: a\tb\r\n" in data


def test_content_length_with_spaces_around_is_honoured(wsgi_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", " 2 ")])
        return [b"ok"]

    live = wsgi_server(app, validate=False)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        assert [c.read_response().body for _ in range(2)] == [b"ok", b"ok"]


def test_the_apps_date_and_server_replace_the_servers(wsgi_server):
    """RFC 9110 5.3, 6.6.1: one Date field; the application's wins (a proxy
    passing on its upstream's), and so does its Server."""
    date = "Mon, 01 Jan 2001 00:00:00 GMT"

    def app(environ, start_response):
        extra = [("Date", date), ("server", "mine")] if environ["PATH_INFO"] == "/own" else []
        start_response("200 OK", [("Content-Type", "text/plain")] + extra)
        return [b"x"]

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(get_request("/own") + get_request("/"))
        own, default = c.read_response(), c.read_response()
    assert [v for k, v in own.headers if k == "date"] == [date]
    assert [v for k, v in own.headers if k == "server"] == ["mine"]
    assert len([k for k, v in default.headers if k == "date"]) == 1
    assert [v for k, v in default.headers if k == "server"] == ["yimmo"]


def test_hop_by_hop_headers_from_the_app_are_dropped(wsgi_server):
    """RFC 9110 7.6.1: they describe the connection, which is the server's
    (gunicorn drops them too); the rest of the response goes out."""
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Keep-Alive", "timeout=99"),
                                  ("TE", "trailers"), ("Upgrade", "h2c"),
                                  ("Proxy-Connection", "keep-alive"), ("X-Kept", "1")])
        return [b"x"]

    live = wsgi_server(app, validate=False)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        resps = [c.read_response() for _ in range(2)]
    for resp in resps:
        names = [k for k, v in resp.headers]
        assert resp.body == b"x" and "x-kept" in names
        assert not {"keep-alive", "te", "upgrade", "proxy-connection"} & set(names), names


def test_latin1_header_values_are_sent_as_latin1(wsgi_server):
    live = wsgi_server(lambda e, s: text(s, b"x", headers=[("X-Name", "caf\xe9 \xff")]))
    data = raw_request(live.address, request())
    assert b"\r\nX-Name: caf\xe9 \xff\r\n" in data


def test_start_response_twice_without_exc_info_is_a_runtime_error(wsgi_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            start_response("500 Oops", [("Content-Type", "text/plain")])
        except RuntimeError:
            return [b"RuntimeError"]
        return [b"no error"]

    live = wsgi_server(app)
    resp, body = live.request("GET", "/")
    assert (resp.status, body) == (200, b"RuntimeError")


def test_a_kept_start_response_says_its_request_is_over(wsgi_server):
    kept, seen = [], []

    def app(environ, start_response):
        if kept:
            try:
                kept[0]("200 OK", [])
            except RuntimeError as e:
                seen.append(str(e))
        kept.append(start_response)
        return text(start_response, b"ok")

    live = wsgi_server(app, validate=False)     # the validator's wrapper checks first
    for _ in range(2):
        assert live.request("GET", "/")[1] == b"ok"
    assert seen == ["the request is over"]


def test_start_response_with_exc_info_before_the_head_replaces_it(wsgi_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("handled")
        except ValueError:
            start_response("503 Service Unavailable",
                           [("Content-Type", "text/plain"), ("X-Second", "1")], sys.exc_info())
        return [b"replaced"]

    live = wsgi_server(app)
    resp, body = live.request("GET", "/")
    assert (resp.status, body) == (503, b"replaced")
    assert resp.getheader("X-Second") == "1" and resp.getheader("X-First") is None


@pytest.mark.parametrize("exc_info", [(None, None, None), (1, 2, 3), (int, 5, "tb"),
                                      (ValueError, KeyError("k"), None), "not a tuple"])
def test_start_response_with_an_exc_info_that_is_no_exception_raises_type_error(wsgi_server,
                                                                               exc_info):
    """sys.exc_info() outside an except block is (None, None, None): after
    the head, start_response once re-raised whatever it was given, and the
    process died (a refcount of None broken; SIGSEGV at exit)."""
    seen = []

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"x")
        try:
            start_response("500 Oops", [("Content-Type", "text/plain")], exc_info)
        except TypeError as e:
            seen.append(str(e))
        return [b"y"]

    live = wsgi_server(app, validate=False)
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        assert c.read_response().body == b"xy"
    assert seen == ["exc_info must be the sys.exc_info() of an exception being handled"]


def test_start_response_with_exc_info_after_the_head_reraises(wsgi_server):
    seen = {}

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return text(start_response, b"still serving")
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        original = ValueError("too late")
        try:
            raise original
        except ValueError:
            try:
                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            except ValueError as e:
                seen["same"] = e is original
                raise
        seen["same"] = "not raised"
        return [b"not reached"]

    live = wsgi_server(app, expect_errors=True)
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        head = c.read_head()
        assert head.status == 200
        # The partial chunk, then the server closes without a last-chunk.
        assert c.read_to_eof() == b"7\r\npartial\r\n"
    assert seen["same"] is True
    errors = live.wait_errors(1)
    assert "Error handling request" in errors[0].getMessage()
    assert errors[0].exc_info[1].args == ("too late",)
    resp, body = live.request("GET", "/next")
    assert (resp.status, body) == (200, b"still serving")


def test_write_callable_then_iterable(wsgi_server):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"hello ")
        write(b"")
        write(b"there ")
        return [b"world"]

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        resp = c.read_response()
    assert resp.body == b"hello there world"
    assert resp.chunked and resp.raw_body == b"6\r\nhello \r\n6\r\nthere \r\n5\r\nworld\r\n0\r\n\r\n"


def test_write_with_content_length_is_not_chunked(wsgi_server):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
        write(b"hello ")
        return [b"world"]

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        r1, r2 = c.read_response(), c.read_response()
    for r in (r1, r2):
        assert (r.status, r.body, r.chunked, r.header("content-length")) == (200, b"hello world", False, "11")


def test_write_rejects_non_bytes(wsgi_server):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            write("text")
        except TypeError:
            return [b"TypeError"]
        return [b"no error"]

    live = wsgi_server(app, validate=False)
    resp, body = live.request("GET", "/")
    assert (resp.status, body) == (200, b"TypeError")


# --- Response bodies ---------------------------------------------------------------


def test_list_and_tuple_bodies_get_content_length(wsgi_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        parts = [b"ab", b"", b"cde"]
        return parts if environ["PATH_INFO"] == "/list" else tuple(parts)

    live = wsgi_server(app, validate=False)  # the validator hides the list behind an iterator
    for path in ("/list", "/tuple"):
        with RawConn(live.address) as c:
            c.send(get_request(path))
            resp = c.read_response()
        assert (resp.body, resp.header("content-length"), resp.chunked) == (b"abcde", "5", False)


def gen_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"a"
        yield b""
        yield b"bc"
    return body()


def test_generator_is_chunked_on_http11(wsgi_server):
    live = wsgi_server(gen_app)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        for _ in range(2):  # and the connection stays usable
            resp = c.read_response()
            assert resp.chunked and resp.header("content-length") is None
            assert resp.raw_body == b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"


def test_generator_is_close_delimited_on_http10(wsgi_server):
    live = wsgi_server(gen_app)
    data = raw_request(live.address, b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")   # RFC 9110 6.2: our version
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert body == b"abc"


def test_empty_generator_has_content_length_zero(wsgi_server):
    live = wsgi_server(lambda e, s: (s("200 OK", [("Content-Type", "text/plain")]), iter(()))[1])
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        for _ in range(2):
            resp = c.read_response()
            assert resp.body == b"" and (resp.header("content-length") == "0" or resp.chunked)


def test_body_is_streamed_as_produced(wsgi_server):
    """The first chunk reaches the client while the app still holds the second."""
    got_first = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"first"
            # Shorter than the client's timeout, so the failure is this one.
            assert got_first.wait(2.0), "the first chunk never reached the client"
            yield b"second"
        return body()

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        head = c.read_head()
        assert head.has_token("transfer-encoding", "chunked")
        assert c.read_line() == b"5" and c.read_exact(7) == b"first\r\n"
        got_first.set()
        assert c.read_line() == b"6" and c.read_exact(8) == b"second\r\n"
        assert c.read_exact(5) == b"0\r\n\r\n"


def test_large_streamed_response_with_a_slow_reader(wsgi_server):
    block = os.urandom(64 * KiB)
    n = 128  # 8 MiB

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (block for _ in range(n))

    live = wsgi_server(app)
    with RawConn(live.address, rcvbuf=16 * KiB, timeout=20) as c:
        c.send(get_request("/"))
        resp = c.read_response()
    assert len(resp.body) == n * len(block)
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(block * n).digest()


def test_app_content_length_is_honoured_for_a_generator(wsgi_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return iter([b"abc", b"def"])

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        for _ in range(2):
            resp = c.read_response()
            assert (resp.body, resp.chunked, resp.header("content-length")) == (b"abcdef", False, "6")
            assert not resp.has_token("transfer-encoding", "chunked")


class Tracked:
    """An iterable that records its close(); fail_at raises before that part."""

    def __init__(self, parts, fail_at=None, log=None):
        self.parts, self.fail_at, self.log = parts, fail_at, log if log is not None else []
        self.closed = threading.Event()

    def __iter__(self):
        for i, p in enumerate(self.parts):
            if i == self.fail_at:
                raise RuntimeError("failed at part %d" % i)
            yield p

    def close(self):
        self.log.append("close")
        self.closed.set()


@pytest.mark.parametrize("declared, parts", [
    (10, [b"abc"]),               # shorter
    (10, [b"abc", b"defg"]),
    (2, [b"abc"]),                # longer
    (4, [b"ab", b"cd", b"ef"]),
])
def test_body_not_matching_content_length_closes_the_connection(wsgi_server, declared, parts):
    bodies = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return text(start_response, b"next")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(declared))])
        bodies.append(Tracked(parts))
        return bodies[-1]

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/next"))
        head = c.read_head()
        assert (head.status, head.header("content-length")) == (200, str(declared))
        rest = c.read_to_eof()  # the second request is never answered
    assert rest == b"".join(parts)[:declared]
    assert bodies[0].closed.wait(IO_TIMEOUT)
    resp, body = live.request("GET", "/next")
    assert body == b"next"


def test_close_is_called_after_success(wsgi_server):
    log = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked([b"a", b"b"], log=log)

    live = wsgi_server(app)
    for method in ("GET", "HEAD"):
        resp, body = live.request(method, "/")
        assert body == (b"ab" if method == "GET" else b"")
    # The client can have the whole body before close() runs: wait for it.
    assert wait_for(lambda: len(log) >= 2)
    assert log == ["close", "close"]


def test_close_is_called_when_iteration_fails_midway(wsgi_server):
    bodies = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return text(start_response, b"next")
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(Tracked([b"a", b"b", b"c"], fail_at=2))
        return bodies[-1]

    live = wsgi_server(app, expect_errors=True)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/next"))
        head = c.read_head()
        assert head.status == 200
        # The parts so far, then a close with no last-chunk: the client can tell.
        assert c.read_to_eof() == b"1\r\na\r\n1\r\nb\r\n"
    assert bodies[0].closed.wait(IO_TIMEOUT)
    errors = live.wait_errors(1)
    assert errors[0].getMessage() == "Error handling request GET /"
    assert errors[0].exc_info and "failed at part 2" in str(errors[0].exc_info[1])
    resp, body = live.request("GET", "/next")
    assert body == b"next"


def test_exception_before_the_first_part_is_a_500_and_close_is_called(wsgi_server):
    bodies = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(Tracked([b"a"], fail_at=0))
        return bodies[-1]

    live = wsgi_server(app, expect_errors=True)
    resp, body = live.request("GET", "/")
    assert resp.status == 500
    assert bodies[0].closed.wait(IO_TIMEOUT)
    assert len(live.wait_errors(1)) == 1


def test_close_is_called_when_the_client_goes_away(wsgi_server):
    closed = threading.Event()
    produced = []

    class Endless:
        def __iter__(self):
            while True:
                produced.append(1)
                yield b"x" * (64 * KiB)

        def close(self):
            closed.set()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return text(start_response, b"next")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Endless()

    live = wsgi_server(app)
    with RawConn(live.address, rcvbuf=4096) as c:
        c.send(get_request("/"))
        assert c.read_head().status == 200
        c.reset()
    assert closed.wait(IO_TIMEOUT), "close() was not called after the client left"
    count = len(produced)
    assert count < 1000, "the app kept producing for a client that was gone"
    resp, body = live.request("GET", "/next")
    assert body == b"next"


def test_exception_before_start_is_a_logged_500_and_serving_goes_on(wsgi_server):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise KeyError("boom-4711")
        return text(start_response, b"fine")

    live = wsgi_server(app, expect_errors=True)
    with RawConn(live.address) as c:
        c.send(get_request("/boom?id=4711") + get_request("/"))
        r1 = c.read_response()
        assert r1.status == 500 and r1.header("content-type").startswith("text/plain")
        assert b"boom-4711" not in r1.body  # no traceback leaks to the client
        # The connection may close after a 500; a new one must be served.
    resp, body = live.request("GET", "/")
    assert (resp.status, body) == (200, b"fine")
    (err,) = live.wait_errors(1)
    assert err.name == "yimmo" and err.getMessage() == "Error handling request GET /boom?id=4711"
    assert err.exc_info[0] is KeyError and "boom-4711" in str(err.exc_info[1])
    assert err.exc_info[2] is not None  # with its traceback


def test_app_returning_without_start_response_is_a_500(wsgi_server):
    live = wsgi_server(lambda e, s: [b"body"], validate=False, expect_errors=True)
    resp, _ = live.request("GET", "/")
    assert resp.status == 500
    assert "Error handling request" in live.wait_errors(1)[0].getMessage()


def test_non_bytes_chunk_before_the_head_is_a_500(wsgi_server):
    live = wsgi_server(lambda e, s: text(s, "text"), validate=False, expect_errors=True)
    resp, _ = live.request("GET", "/")
    assert resp.status == 500
    assert live.wait_errors(1)[0].exc_info[0] is TypeError


def test_non_bytes_chunk_after_the_head_closes_the_connection(wsgi_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked([b"ok", "text", b"never"])

    live = wsgi_server(app, validate=False, expect_errors=True)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        assert c.read_head().status == 200
        assert c.read_to_eof() == b"2\r\nok\r\n"
    assert live.wait_errors(1)[0].exc_info[0] is TypeError


def test_head_has_no_body_but_the_same_content_length(wsgi_server):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/declared":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
            return iter([b"hello", b" world"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello", b" world"]

    live = wsgi_server(app, validate=False)
    for path in ("/declared", "/list"):
        with RawConn(live.address) as c:
            c.send(b"HEAD %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode() + get_request(path))
            head = c.read_response("HEAD")
            get = c.read_response()
        assert head.status == 200 and head.header("content-length") == "11", path
        assert get.body == b"hello world" and get.header("content-length") == "11"


def test_head_answered_with_an_empty_body_claims_no_length(wsgi_server):
    # Werkzeug answers every HEAD of a streamed response with an empty
    # iterable: that says nothing of the GET's length, so no Content-Length
    # (RFC 9110 9.3.2), where "Content-Length: 0" would be a wrong one.
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["REQUEST_METHOD"] == "HEAD":
            return [] if environ["PATH_INFO"] == "/list" else iter([])
        return (b"hello %d" % i for i in range(2))

    live = wsgi_server(app, validate=False)     # on the loop and on worker threads
    for path in ("/list", "/iter"):
        with RawConn(live.address) as c:
            c.send(b"HEAD %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode() + get_request(path))
            head = c.read_response("HEAD")
            get = c.read_response()
        assert head.status == 200 and head.header("content-length") is None, path
        assert get.body == b"hello 0hello 1"


def test_file_wrapper_serves_a_file_and_closes_it(wsgi_server, tmp_path):
    data = os.urandom(300 * KiB + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    files = []

    def app(environ, start_response):
        f = open(path, "rb")
        files.append(f)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](f, 8192)

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        for _ in range(2):
            resp = c.read_response()
            assert resp.body == data and resp.header("content-length") == str(len(data))
    assert len(files) == 2
    assert wait_for(lambda: all(f.closed for f in files)), "the file was never closed"


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(100 * KiB + 3)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, data


def test_file_wrapper_head_sends_the_file_length_and_no_body(wsgi_server, blob):
    path, data = blob
    files = []

    def app(environ, start_response):
        f = open(path, "rb")
        files.append(f)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f)

    live = wsgi_server(app, validate=False)     # wsgiref's validator would hide the wrapper
    with RawConn(live.address) as c:
        c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get_request("/"))
        head = c.read_response("HEAD")
        get = c.read_response()     # nothing of the file came after the HEAD's head
    assert head.status == 200 and head.header("content-length") == str(len(data))
    assert get.body == data and get.header("content-length") == str(len(data))
    assert wait_for(lambda: len(files) == 2 and all(f.closed for f in files))


@pytest.mark.parametrize("declared", ["shorter", "longer"])
def test_file_wrapper_against_a_wrong_content_length_closes(wsgi_server, blob, declared):
    """The declared length is what goes out, never more; either way the
    connection then closes, and the pipelined request behind is not read."""
    path, data = blob
    n = 1000 if declared == "shorter" else len(data) + 500

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(n))])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    live = wsgi_server(app, validate=False, expect_errors=True)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        head = c.read_head()
        rest = c.read_to_eof()
    assert head.status == 200 and head.header("content-length") == str(n)
    assert rest == data[:n]


def test_file_wrapper_after_write_is_sent_chunked(wsgi_server, blob):
    """write() started a response of unknown length: the file follows as
    chunks, from the file object's current position."""
    path, data = blob

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        write(b"prefix:")
        f = open(path, "rb")
        f.seek(10)
        return environ["wsgi.file_wrapper"](f)

    live = wsgi_server(app, validate=False)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        for _ in range(2):
            resp = c.read_response()
            assert resp.chunked and resp.body == b"prefix:" + data[10:]


def test_file_wrapper_over_a_file_like_without_fileno_is_iterated(wsgi_server):
    data = os.urandom(50 * KiB + 1)
    reads = []

    class Reader(io.BytesIO):
        def read(self, n=-1):
            chunk = super().read(n)
            reads.append((n, len(chunk)))
            return chunk

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](Reader(data), 4096)

    live = wsgi_server(app)
    resp, body = live.request("GET", "/")
    assert body == data
    assert {n for n, _ in reads} == {4096} and reads[-1] == (4096, 0)


def test_keep_alive_many_requests_on_one_connection(wsgi_server):
    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        return text(start_response, environ["PATH_INFO"].encode() + b":" + body)

    live = wsgi_server(app)
    conn = live.http()
    try:
        for i in range(50):
            conn.request("POST", "/r%d" % i, body=b"b%d" % i)
            resp = conn.getresponse()
            assert resp.read() == b"/r%d:b%d" % (i, i)
    finally:
        conn.close()


def test_access_log_gets_environ_status_headers_bytes_and_duration(wsgi_server):
    entries = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Id", "7")])
        return iter([b"abc", b"de"])

    live = wsgi_server(app, access_log=lambda *a: entries.append(a), expect_errors=True)
    t0 = time.monotonic()
    resp, body = live.request("POST", "/made?q=1", body=b"xyz")
    elapsed = time.monotonic() - t0
    assert (resp.status, body) == (201, b"abcde")
    wait_for(lambda: entries)
    (environ, status, headers, nbytes, duration), = entries
    assert (environ["PATH_INFO"], environ["QUERY_STRING"], environ["REQUEST_METHOD"]) == ("/made", "q=1", "POST")
    assert status == "201 Created"
    assert headers == [("Content-Type", "text/plain"), ("X-Id", "7")]
    assert nbytes == 5
    assert isinstance(duration, float) and 0 <= duration <= elapsed
    resp, _ = live.request("GET", "/boom")
    assert resp.status == 500
    wait_for(lambda: len(entries) == 2)
    assert entries[1][0]["PATH_INFO"] == "/boom" and entries[1][1].startswith("500")


@pytest.mark.parametrize("method,status,logged", [("GET", "200 OK", 5), ("HEAD", "200 OK", 0),
                                                   ("GET", "304 Not Modified", 0)])
def test_access_log_counts_body_bytes_sent_not_given(wsgi_server, method, status, logged):
    entries = []

    def app(environ, start_response):
        start_response(status, [("Content-Type", "text/plain")])
        return [b"hello"]

    live = wsgi_server(app, access_log=lambda *a: entries.append(a), validate=False)
    with RawConn(live.address) as c:
        c.send(b"%s / HTTP/1.1\r\nHost: t\r\n\r\n" % method.encode())
        c.read_response(method)
    assert wait_for(lambda: entries)
    assert entries[0][3] == logged


# On the loop thread a body is read before the app runs (see below).
@pytest.mark.parametrize("wsgi_server", [2], indirect=True, ids=["threads"])
@pytest.mark.parametrize("case", ["bad chunk", "body timeout"])
def test_a_bad_body_after_the_response_started_closes_without_a_second_status(wsgi_server, case):
    """The app answered before reading (write(), then wsgi.input): a 400 or
    408 now would be a status line inside its response. The connection
    closes instead (RFC 9112 9.6), the response visibly cut."""
    seen = []

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial-")
        try:
            environ["wsgi.input"].read()
        except Exception as e:
            seen.append(e)
            raise
        return [b"complete"]

    live = wsgi_server(app, validate=False, expect_errors=True, body_timeout=0.5)
    with RawConn(live.address) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               b"Expect: 100-continue\r\n\r\n")
        if case == "bad chunk":
            c.send(b"3\r\nabc\r\nZZ\r\n\r\n")
        data = c.read_to_eof()
    # No 100 Continue: a response started already (RFC 9110 10.1.1).
    assert data.count(b"HTTP/1.1 ") == 1, data
    head, _, body = data.partition(b"HTTP/1.1 200 OK\r\n")[2].partition(b"\r\n\r\n")
    assert body == b"8\r\npartial-\r\n", data     # no last chunk: the client sees it cut
    assert wait_for(lambda: seen) and isinstance(seen[0], OSError)


# On the loop thread a body is read before the app runs (see below).
@pytest.mark.parametrize("wsgi_server", [2], indirect=True, ids=["threads"])
def test_client_reset_mid_upload_raises_in_the_app_and_is_not_an_error(wsgi_server):
    seen = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return text(start_response, b"next")
        inp = environ["wsgi.input"]
        try:
            while inp.read(8192):
                pass
        except Exception as e:
            seen.append(e)
            raise
        seen.append(None)
        return text(start_response, b"complete?")

    live = wsgi_server(app)
    with RawConn(live.address) as c:
        c.send(request("/", "POST", [("Content-Length", "1000000")]) + b"a" * 100000)
        c.reset()
    assert wait_for(lambda: seen), "the app never finished reading"
    assert isinstance(seen[0], OSError), "a cut upload read as complete: %r" % (seen[0],)
    resp, body = live.request("GET", "/next")
    assert body == b"next"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
@pytest.mark.parametrize("length", [False, True], ids=["", "with Content-Length"])
def test_no_body_statuses_send_no_body_and_keep_the_connection(wsgi_server, status, length):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return text(start_response, b"next")
        start_response(status, [("Content-Length", "16")] if length else [])
        return [b"must not be sent"]

    live = wsgi_server(app, validate=False)  # the validator rejects a body here itself
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/next"))
        first = c.read_head()
        assert first.status == int(status[:3])
        assert not first.has_token("transfer-encoding", "chunked")
        # RFC 9110 8.6: never in a 204; a 304 may give the representation's.
        if status.startswith("204"):
            assert first.header("content-length") is None
        second = c.read_response()
        assert (second.status, second.body) == (200, b"next")


def test_exception_in_close_is_logged_and_serving_goes_on(wsgi_server):
    class Body:
        def __iter__(self):
            yield b"x"

        def close(self):
            raise ValueError("close-failed-99")

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return text(start_response, b"next")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    live = wsgi_server(app, expect_errors=True)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/next"))
        assert c.read_response().body == b"x"
        assert c.read_response().body == b"next"
    (err,) = live.wait_errors(1)
    assert "close-failed-99" in str(err.exc_info[1])


def test_app_connection_close_header_closes_the_connection(wsgi_server):
    live = wsgi_server(lambda e, s: text(s, b"bye", headers=[("Connection", "close")]),
                       validate=False)  # hop-by-hop: the validator objects, servers must cope
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/"))
        resp = c.read_response()
        assert resp.body == b"bye" and resp.has_token("connection", "close")
        assert len(resp.header_all("connection")) == 1
        c.assert_closed()


@pytest.mark.parametrize("values", [["abc"], ["-1"], [""], ["1e3"], ["3", "5"]])
def test_bogus_app_content_length_is_never_written(wsgi_server, values):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")] + [("Content-Length", v) for v in values])
        return [b"abc"]

    live = wsgi_server(app, validate=False, expect_errors=True)
    data = raw_request(live.address, request())
    resp = parse_responses(data)
    assert resp[0].status == 500, data
    for v in values:
        if v != "3":
            assert b"Content-Length: %s\r\n" % v.encode() not in data
    assert live.wait_errors(1)


def test_write_and_input_after_the_request_are_errors(wsgi_server):
    saved = {}

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/save":
            saved["write"] = start_response("200 OK", [("Content-Type", "text/plain")])
            saved["input"] = environ["wsgi.input"]
            return [b"saved"]
        out = []
        for use in (lambda: saved["write"](b"late"), lambda: saved["input"].read(1)):
            try:
                use()
                out.append("no error")
            except Exception as e:
                out.append(type(e).__name__)
        return text(start_response, " ".join(out).encode())

    live = wsgi_server(app, validate=False)  # the validator wraps write and input
    resp, body = live.request("POST", "/save", body=b"abc")
    assert body == b"saved"
    resp, body = live.request("GET", "/use")
    assert body == b"RuntimeError ValueError"


def test_write_and_input_are_the_applications_thread_only(wsgi_server):
    # Two threads writing one response interleaved it (a second status
    # line inside the chunked body); a read left running past the request
    # would use its connection after it went back to the loop.
    import threading

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        out = []

        def other():
            for use in (lambda: write(b"elsewhere"), lambda: environ["wsgi.input"].read(1)):
                try:
                    use()
                    out.append("no error")
                except RuntimeError as e:
                    out.append(str(e))
        t = threading.Thread(target=other)
        t.start()
        t.join()
        write(b"mine: ")
        return [b" | ".join(o.encode() for o in out)]

    live = wsgi_server(app, validate=False)  # the validator wraps write and input
    resp, body = live.request("POST", "/", body=b"abc")
    assert body == (b"mine: the write() callable is used on the thread that runs the application "
                    b"only, not from other threads | wsgi.input is used on the thread that runs "
                    b"the application only, not from other threads")


def test_http10_keep_alive_when_asked(wsgi_server):
    live = wsgi_server(lambda e, s: text(s, e["PATH_INFO"].encode()), validate=False)
    with RawConn(live.address) as c:
        c.send(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /two HTTP/1.0\r\n\r\n")
        r1 = c.read_response()
        # RFC 9110 6.2: our version in the status line; keep-alive as 1.0 asks it.
        assert (r1.version, r1.body) == ("HTTP/1.1", b"/one") and r1.has_token("connection", "keep-alive")
        r2 = c.read_response()
        assert r2.body == b"/two"
        c.assert_closed()


def test_wsgi_errors_takes_text(wsgi_server):
    def app(environ, start_response):
        errors = environ["wsgi.errors"]
        errors.write("yimmo-wsgi-errors-line\n")
        errors.writelines(["a\n", "b\n"])
        errors.flush()
        return text(start_response, b"ok")

    live = wsgi_server(app)
    resp, body = live.request("GET", "/")
    assert (resp.status, body) == (200, b"ok")


def test_returning_bytes_instead_of_an_iterable_of_bytes_is_an_error(wsgi_server):
    # Iterating bytes gives ints: PEP 3333 wants an iterable of bytestrings.
    live = wsgi_server(lambda e, s: (s("200 OK", [("Content-Type", "text/plain")]), b"abc")[1],
                       validate=False, expect_errors=True)
    resp, _ = live.request("GET", "/")
    assert resp.status == 500
    assert live.wait_errors(1)[0].exc_info[0] is TypeError

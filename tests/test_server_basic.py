"""Requests and responses: what the handler sees and what the client gets."""
import collections
import email.utils
import os
import platform
import socket
import subprocess
import sys
import time
import types

import pytest

import yimmo
from conftest import RawConn, get_request, parse_responses, raw_request


def ok(ex):
    ex.respond(200, [("Content-Type", "text/plain")], b"hi")


def test_address_is_bound_in_constructor():
    srv = yimmo.Server(ok, host="127.0.0.1", port=0)
    host, port = srv.address[0], srv.address[1]
    assert host == "127.0.0.1"
    assert 0 < port < 65536
    # The socket listens before run(): the kernel completes the handshake.
    with socket.create_connection((host, port), timeout=2):
        pass


def test_get_returns_the_handler_response_with_content_length(server):
    live = server(ok)
    resp, body = live.get("/")
    assert resp.status == 200
    assert body == b"hi"
    assert resp.getheader("Content-Length") == "2"
    assert resp.getheader("Content-Type") == "text/plain"
    assert resp.getheader("Transfer-Encoding") is None


def test_server_adds_date_and_server_headers(server):
    live = server(ok)
    resp, _ = live.get("/")
    date = resp.getheader("Date")
    assert date is not None and date.endswith(" GMT"), date
    sent = email.utils.parsedate_to_datetime(date).timestamp()
    assert abs(sent - time.time()) < 5
    assert resp.getheader("Server")


def test_respond_status_has_its_reason_phrase(server):
    live = server(lambda ex: ex.respond(404, [], b"nope"))
    resp, body = live.get("/missing")
    assert (resp.status, resp.reason, body) == (404, "Not Found", b"nope")


def test_request_line_fields_reach_the_handler(server):
    seen = []
    live = server(lambda ex: (seen.append((ex.method, ex.path, ex.query, ex.version)), ok(ex)))
    live.get("/a/b%20c?x=1&y=%41")
    live.get("/plain")
    assert seen == [("GET", "/a/b%20c", "x=1&y=%41", "HTTP/1.1"),
                    ("GET", "/plain", "", "HTTP/1.1")]


def test_http10_version_reaches_the_handler(server):
    seen = []
    live = server(lambda ex: (seen.append(ex.version), ok(ex)))
    data = raw_request(live.address, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.")
    assert seen == ["HTTP/1.0"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"])
def test_method_is_passed_through(server, method):
    seen = []
    live = server(lambda ex: (seen.append(ex.method), ok(ex)))
    resp, _ = live.get("/", method=method, body=b"" if method != "OPTIONS" else None)
    assert resp.status == 200
    assert seen == [method]


def test_headers_are_lowercased_ordered_and_keep_duplicates(server):
    seen = {}

    def handler(ex):
        h = ex.headers
        seen["items"] = h.items()
        seen["len"] = len(h)
        seen["first"] = h["X-DUP"]
        seen["all"] = h.getall("x-Dup")
        seen["in"] = ("X-Dup" in h, "x-dup" in h, "absent" in h)
        seen["get"] = (h.get("X-One"), h.get("absent"), h.get("absent", "dflt"))
        try:
            h["Absent"]
        except KeyError:
            seen["keyerror"] = True
        seen["getall_absent"] = h.getall("absent")
        seen["isinstance"] = isinstance(h, yimmo.Headers) and isinstance(ex, yimmo.Exchange)
        ok(ex)

    live = server(handler)
    raw_request(live.address, b"GET / HTTP/1.1\r\nHost: example\r\nX-Dup: a\r\nX-One:   spaced  \r\n"
                              b"x-dup: b\r\nConnection: close\r\n\r\n")
    assert seen["items"] == [("host", "example"), ("x-dup", "a"), ("x-one", "spaced"),
                             ("x-dup", "b"), ("connection", "close")]
    assert seen["len"] == 5
    assert seen["first"] == "a"
    assert seen["all"] == ["a", "b"]
    assert seen["in"] == (True, True, False)
    assert seen["get"] == ("spaced", None, "dflt")
    assert seen.get("keyerror") is True
    assert seen["getall_absent"] == []
    assert seen["isinstance"] is True


def test_headers_looked_up_with_a_str_subclass(server):
    """A str subclass is a name like any str: its own lower() is not used
    (one returning None once left an exception set: SystemError)."""
    class Name(str):
        def lower(self):
            return None

    seen = {}

    def handler(ex):
        h = ex.headers
        seen["lookups"] = (h.get(Name("X-One")), h.getall(Name("X-ONE")), h[Name("x-one")],
                           Name("X-One") in h, Name("Absent") in h)
        ok(ex)

    live = server(handler)
    raw_request(live.address, b"GET / HTTP/1.1\r\nHost: e\r\nX-One: v\r\nConnection: close\r\n\r\n")
    assert seen["lookups"] == ("v", ["v"], "v", True, False)


def test_remote_addr_is_the_client_socket_address(server):
    seen = []
    live = server(lambda ex: (seen.append(tuple(ex.remote_addr)), ok(ex)))
    with RawConn(live.address) as c:
        c.send(get_request("/"))
        c.read_response()
        local = c.sock.getsockname()
    assert seen == [(local[0], local[1])]


def test_respond_accepts_dict_headers_and_str_body(server):
    live = server(lambda ex: ex.respond(201, {"X-Kind": "dict"}, "h\u00e9llo \u2713"))
    resp, body = live.get("/")
    assert resp.status == 201
    assert resp.getheader("X-Kind") == "dict"
    assert body == "h\u00e9llo \u2713".encode("utf-8")
    assert resp.getheader("Content-Length") == str(len(body))


def test_respond_takes_any_mapping_and_refuses_str_pairs(server):
    """A mapping gives its items() (MappingProxyType, ChainMap, ... as a dict);
    a 2-character str is no (name, value) pair."""
    seen = []

    def handler(ex):
        kind = ex.path[1:]
        if kind == "proxy":
            ex.respond(200, types.MappingProxyType({"X-A": "1", "XY": "2"}), b"")
        elif kind == "chain":
            ex.respond(200, collections.ChainMap({"X-B": "3"}), b"")
        else:
            try:
                ex.respond(200, ["XY"], b"")
            except TypeError as e:
                seen.append(str(e))
                ex.respond(400, [], b"")

    live = server(handler)
    resp, _ = live.get("/proxy")
    assert (resp.getheader("X-A"), resp.getheader("XY"), resp.getheader("X")) == ("1", "2", None)
    assert live.get("/chain")[0].getheader("X-B") == "3"
    assert live.get("/str")[0].status == 400
    assert seen == ["each header must be a (name, value) pair, not str"]


def test_respond_inside_the_headers_own_iteration_sends_one_answer(server):
    """Reading the headers runs the application's code, which answered
    already: the outer respond() refuses, and one response goes out."""
    seen = []

    class Sneaky:
        def __init__(self, ex):
            self.ex = ex

        def __iter__(self):
            self.ex.respond(200, [], b"inner")
            return iter([("X-Outer", "1")])

    def handler(ex):
        try:
            ex.respond(200, Sneaky(ex), b"outer")
        except RuntimeError as e:
            seen.append(str(e))

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(get_request("/") + get_request("/next"))
        assert c.read_response().body == b"inner"
        assert c.read_response().body == b"inner"
    assert seen == ["the response has already started"] * 2


def test_read_and_cached_attributes_after_the_handler(server):
    """read() is a method: the exchange's, while the handler runs, even with
    the body read; target and tls, once read, stay readable."""
    kept = []

    def handler(ex):
        assert ex.body == b"abcdef" and ex.read(2) == b"ab"
        ex.target, ex.tls
        kept.append(ex)
        ex.respond(200, [], b"")

    live = server(handler)
    live.get("/t?q=1", method="POST", body=b"abcdef")
    (ex,) = kept
    assert (ex.target, ex.tls) == ("/t?q=1", None)
    with pytest.raises(RuntimeError, match="handler returned"):
        ex.read()


def test_respond_keeps_duplicate_header_pairs(server):
    live = server(lambda ex: ex.respond(200, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], b""))
    resp, body = live.get("/")
    assert resp.msg.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert resp.getheader("Content-Length") == "0" and body == b""


def test_empty_request_body_is_empty_bytes(server):
    seen = []
    live = server(lambda ex: (seen.append((ex.body, ex.read())), ok(ex)))
    live.get("/")
    assert seen == [(b"", b"")]


def test_many_request_headers_arrive_intact(server):
    seen = []
    live = server(lambda ex: (seen.append(ex.headers.items()), ok(ex)))
    sent = [("x-h%02d" % i, "v" * i) for i in range(60)]
    raw_request(live.address, get_request("/", headers=sent + [("Connection", "close")]))
    assert seen[0][1:-1] == sent


def test_head_has_get_headers_and_no_body(server):
    methods = []

    def handler(ex):
        methods.append(ex.method)
        ex.respond(200, [("Content-Type", "text/plain")], b"x" * 123)

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head = c.read_response("HEAD")
        # If the HEAD response carried a body, this would parse body bytes as a status line.
        get = c.read_response("GET")
        c.assert_closed()
    assert methods == ["HEAD", "GET"]
    assert head.status == get.status == 200
    assert head.header("content-length") == "123"
    assert get.body == b"x" * 123
    names = lambda r: sorted(k for k, _ in r.headers if k not in ("date", "connection"))
    assert names(head) == names(get)


def test_head_answered_with_an_empty_body_claims_no_length(server):
    def handler(ex):
        ex.respond(200, [("Content-Type", "text/plain")], b"" if ex.method == "HEAD" else b"abc")

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        head = c.read_response("HEAD")
        get = c.read_response("GET")
    assert head.status == 200 and head.header("content-length") is None
    assert get.body == b"abc" and get.header("content-length") == "3"


def test_head_with_streaming_handler_sends_no_body(server):
    def handler(ex):
        ex.start(200, [("Content-Type", "text/plain")])
        ex.write(b"body that must not be sent")
        ex.end()

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head = c.read_response("HEAD")
        get = c.read_response("GET")
        c.assert_closed()
    assert head.status == 200
    assert get.body == b"body that must not be sent"


def test_ipv6_loopback(server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    seen = []
    live = server(lambda ex: (seen.append(ex.remote_addr[0]), ok(ex)), host="::1")
    assert live.address[0] == "::1"
    resp, body = live.get("/")
    assert (resp.status, body) == (200, b"hi")
    assert seen == ["::1"]


def _close_listener(ls):
    """Close ls unless the server already closed its fd (ownership is not specified)."""
    try:
        os.fstat(ls.fileno())
    except OSError:
        ls.detach()
        return
    ls.close()


@pytest.mark.parametrize("as_fd", [False, True], ids=["socket-object", "int-fd"])
def test_serves_on_a_prebound_listening_socket(server, as_fd):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    bound = ls.getsockname()
    try:
        live = server(ok, sock=ls.fileno() if as_fd else ls)
        assert tuple(live.address[:2]) == bound
        resp, body = live.get("/")
        assert (resp.status, body) == (200, b"hi")
        live.stop_and_wait()
    finally:
        _close_listener(ls)


def test_second_request_on_a_connection_sees_fresh_exchange(server):
    seen = []

    def handler(ex):
        seen.append((ex.path, ex.body, ex.headers.get("x-n")))
        ex.respond(200, [], ex.path)

    live = server(handler)
    with RawConn(live.address) as c:
        c.send(b"POST /1 HTTP/1.1\r\nHost: t\r\nX-N: 1\r\nContent-Length: 3\r\n\r\nabc")
        assert c.read_response().body == b"/1"
        c.send(b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().body == b"/2"
    assert seen == [("/1", b"abc", "1"), ("/2", b"", None)]


def test_responses_parse_with_the_raw_reader(server):
    """The helper itself: two complete responses back to back."""
    live = server(ok)
    data = raw_request(live.address, get_request("/") + get_request("/", headers=[("Connection", "close")]))
    rs = parse_responses(data)
    assert [(r.status, r.body) for r in rs] == [(200, b"hi"), (200, b"hi")]


MALLOC_PROBE = """
import sys, threading, yimmo
kw = {} if sys.argv[1] == "default" else {"tune_malloc": sys.argv[1] == "True"}
srv = yimmo.Server(lambda ex: None, port=0, **kw)
before = yimmo._yimmo._malloc_tuned()
t = threading.Thread(target=srv.run)
t.start()
srv.stop()
t.join(10)
print(before, yimmo._yimmo._malloc_tuned())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="under AddressSanitizer malloc is ASan's and mallopt does nothing")
@pytest.mark.parametrize("arg, env, want", [
    ("default", {}, "None True"),
    ("True", {}, "None True"),
    ("False", {}, "None None"),
    ("default", {"MALLOC_TRIM_THRESHOLD_": "131072"}, "None False"),
    ("default", {"MALLOC_MMAP_THRESHOLD_": "131072"}, "None False"),
    ("default", {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}, "None False"),
])
def test_run_tunes_glibc_malloc_once_unless_told_not_to(arg, env, want):
    """run() sets glibc's heap thresholds for the process (not the import,
    not the constructor), unless tune_malloc=False or the environment sets
    malloc's own variables."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, arg], env={**base, **env},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == want


@pytest.mark.parametrize("value, exc", [(-0.001, ValueError), (0.5, ValueError), ("x", TypeError)])
def test_busy_poll_is_checked(value, exc):
    with pytest.raises(exc, match="busy_poll"):
        yimmo.Server(lambda ex: None, port=0, busy_poll=value)


def _loop_cpu(live):
    return time.clock_gettime(time.pthread_getcpuclockid(live.thread.ident))


def _loop_busy(server, busy_poll):
    """Loop-thread CPU time over wall time while requests come 3 ms apart."""
    live = server(lambda ex: ex.respond(200, [], b"ok"), busy_poll=busy_poll)
    conn = live.http()
    try:
        t0, c0 = time.monotonic(), _loop_cpu(live)
        while time.monotonic() - t0 < 0.6:
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok"
            time.sleep(0.003)  # The gap the loop spins through, or sleeps through.
        return (_loop_cpu(live) - c0) / (time.monotonic() - t0)
    finally:
        conn.close()


def test_busy_poll_keeps_the_loop_polling_between_close_requests(server):
    """Requests 3 ms apart: with busy_poll=10 ms the loop thread never goes
    to sleep in between, so it uses a CPU as far as the machine lets it
    (alone, about 99 %); without, it sleeps between requests (about 1 %).
    Compared in one test, so that a loaded machine lowers both."""
    spinning = _loop_busy(server, 0.01)
    sleeping = _loop_busy(server, 0)
    assert sleeping < 0.3, "without busy_poll the loop was busy %.0f%%" % (sleeping * 100)
    assert spinning > 0.15 and spinning > 5 * sleeping, \
        "busy %.0f%% with busy_poll, %.0f%% without" % (spinning * 100, sleeping * 100)


def documented_arguments(doc):
    """name -> default, from a 'Server(handler, *, name=default, ...)' docstring."""
    head = doc.split("\n\n")[0]
    args = head[head.index("*,") + 2:head.rindex(")")]
    out = {}
    for part in args.replace("\n", " ").split(","):
        name, _, default = part.strip().partition("=")
        if name and not name.startswith("..."):
            out[name] = default
    return out


def doc_table_names(path):
    """The first-column `names` of the markdown tables in a docs page."""
    names = set()
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", path)) as f:
        for line in f:
            if line.startswith("| `"):
                first = line.split("|")[1]
                names.update(n.strip(" `") for n in first.split(","))
    return names


def test_server_docstring_lists_every_argument_with_its_default():
    """Server.__doc__ names the arguments docs/server.md and docs/websockets.md
    document, and each is accepted with the default the docstring gives."""
    args = documented_arguments(yimmo.Server.__doc__)
    settings = doc_table_names("server.md") | {n for n in doc_table_names("websockets.md")
                                               if n.startswith("ws_") and "." not in n}
    assert settings <= set(args), sorted(settings - set(args))
    units = {"MiB": 1 << 20}
    for name, default in args.items():
        if name in ("host", "port", "sock", "tls", "websocket"):
            continue
        num, _, unit = default.partition(" ")
        value = eval(num) * units[unit] if unit else eval(default)  # noqa: S307 (our docstring)
        srv = yimmo.Server(lambda ex: None, port=0, **{name: value})
        srv.stop()
    with pytest.raises(TypeError):
        yimmo.Server(lambda ex: None, port=0, no_such_argument=1)
    wsgi = documented_arguments(yimmo.WSGIServer.__doc__)
    assert {"url_scheme", "script_name", "multiprocess", "access_log", "body_buffer_size",
            "threads"} <= set(wsgi)

"""TLS (HTTPS and WSS) over real sockets: yimmo.Server and yimmo.WSGIServer
with tls= set, certificates made for the run by trustme (tests/tls_conftest.py).

Clients are Python's ssl + http.client, raw TLS sockets with a hand-made
response reader (conftest.RawConn, strict about close_notify), curl and the
`websockets` library. Covered: requests, keep-alive and pipelining; client
certificates (RFC 8446 4.3.2, 4.4.2); protocol versions (RFC 8996: no TLS
1.0/1.1); ALPN (RFC 7301 3.2); SNI (RFC 6066 3); big bodies, file bodies and
backpressure; what is not TLS on a TLS port; reload_tls; configuration
errors; mixed plain/TLS listeners; the HTTP hardening rules once more over
TLS.
"""
import asyncio
import functools
import gc
import hashlib
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from websockets.asyncio.client import connect as ws_aconnect

import yimmo
from conftest import IO_TIMEOUT, RawConn, get_request, open_fds, parse_responses, wait_for
from test_hardening import (LIMIT_RULES, LIMITS, RULES, SMUGGLED, rss, rss_meaningful,
                            wait_stalled)
from tls_conftest import (KEY_PASSWORD, MiB, client_context, pattern, pki, tls_conn, tls_serve,
                          tls_socket)
from wsgi_conftest import STRICT_WARNINGS

pytestmark = STRICT_WARNINGS

__all__ = ["pki", "tls_serve"]  # Fixtures, imported for pytest.

TLSv1, TLSv1_1, TLSv1_2, TLSv1_3 = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1,
                                    ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


@pytest.fixture(params=["native", "native-threads", "wsgi", "wsgi-threads"])
def kind4(request):
    return request.param


@pytest.fixture(params=["native", "wsgi", "wsgi-threads"])
def kind3(request):
    return request.param


@pytest.fixture(params=["native", "wsgi"])
def kind2(request):
    return request.param


def tls_info(live):
    """The last request's TLS facts in exchange.tls's shape, for both servers.

    For WSGI also asserts the environ says https, and adds `verify`
    (SSL_CLIENT_VERIFY) and `issuer` (SSL_CLIENT_I_DN).
    """
    info = live.app.last()
    if live.flavour == "native":
        assert info["tls"] is not None, "exchange.tls is None on a TLS connection"
        return dict(info["tls"], port=info["port"])
    assert (info["wsgi.url_scheme"], info.get("HTTPS")) == ("https", "on"), info
    pem = info.get("SSL_CLIENT_CERT")
    return {"version": info["SSL_PROTOCOL"], "cipher": info["SSL_CIPHER"],
            "server_name": info.get("SSL_TLS_SNI"), "peer_subject": info.get("SSL_CLIENT_S_DN"),
            "peer_cert": ssl.PEM_cert_to_DER_cert(pem) if pem else None,
            "verify": info.get("SSL_CLIENT_VERIFY"), "issuer": info.get("SSL_CLIENT_I_DN"),
            "port": int(info["REMOTE_PORT"])}


def refused(live, ctx, server_hostname="localhost", path="/refused"):
    """Connect, handshake, send a request: something must fail and no response arrive.

    Returns (phase, exception): phase "handshake" when the client's handshake
    raised, "read" when it completed (TLS 1.3 clients finish before the
    server has checked their certificate) and the first read raised or hit
    EOF (exception None). A timeout is never a refusal.
    """
    try:
        s = tls_socket(live.address, ctx, server_hostname, strict_eof=False)
    except TimeoutError:
        raise AssertionError("the handshake hung instead of failing") from None
    except OSError as e:  # ssl.SSLError, ConnectionResetError, BrokenPipeError...
        return "handshake", e
    with s:
        try:
            s.sendall(get_request(path))
            data = s.recv(65536)
        except TimeoutError:
            raise AssertionError("the server neither answered nor closed") from None
        except OSError as e:
            data, err = b"", e
        else:
            err = None
    assert data == b"", "a refused client got an answer: %r" % data[:300]
    assert path not in live.app.paths(), live.app.paths()
    return "read", err


def assert_serves(live, path="/after", **kw):
    resp, body = live.request("GET", path, **kw)
    assert (resp.status, body) == (200, b"ok " + path.encode()), (resp.status, body)


# --- Requests, keep-alive, pipelining ----------------------------------------


def test_get_and_post_over_tls(tls_serve, kind4):
    live = tls_serve(kind4)
    conn = live.https()
    try:
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"ok /hello")
        version, cipher = conn.sock.version(), conn.sock.cipher()[0]
        body = pattern(100000)
        conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, body)
    finally:
        conn.close()
    assert live.app.paths() == ["/hello", "/echo"]
    info = tls_info(live)
    assert version == "TLSv1.3"  # Both ends' default.
    assert (info["version"], info["cipher"], info["server_name"]) == (version, cipher, "localhost")
    assert (info["peer_cert"], info["peer_subject"]) == (None, None)
    if live.flavour == "native":
        assert info["alpn"] is None  # http.client offers no ALPN.
    else:
        assert info["verify"] in (None, "NONE"), info


def test_keepalive_several_requests_on_one_tls_connection(tls_serve, kind4):
    live = tls_serve(kind4)
    conn = live.https()
    try:
        for i in range(6):
            if i % 2:
                body = b"body %d " % i * 1000
                conn.request("POST", "/echo", body=body)
            else:
                body = b"ok /get%d" % i
                conn.request("GET", "/get%d" % i)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, body), i
            assert not resp.will_close
            if i == 0:
                sock = conn.sock
            assert conn.sock is sock, "http.client had to reconnect"
        assert live.srv.connections == 1
    finally:
        conn.close()
    ports = {tls_info_at(live, j)["port"] for j in range(6)}
    assert len(ports) == 1, "six requests came from %d client ports" % len(ports)
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


def tls_info_at(live, i):
    """The i-th request's client port as the server saw it."""
    path, info = live.app.seen[i]
    return {"port": info["port"] if live.flavour == "native" else int(info["REMOTE_PORT"])}


def test_pipelined_requests_over_tls(tls_serve, kind3):
    live = tls_serve(kind3)
    body = pattern(30000)
    with live.tls_conn() as c:
        c.send(get_request("/a")
               + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
               + get_request("/c", headers=[("Connection", "close")]))
        responses = [c.read_response() for _ in range(3)]
        c.assert_closed()  # close_notify, then EOF (strict: an EOF without it raises).
    assert [(r.status, r.body) for r in responses] == [(200, b"ok /a"), (200, body), (200, b"ok /c")]
    assert responses[2].has_token("connection", "close")
    assert live.app.paths() == ["/a", "/echo", "/c"]


class BioClient:
    """A TLS client over a raw socket through memory BIOs, so the test
    decides which encrypted bytes go out and when."""

    def __init__(self, live):
        self.sock = socket.create_connection(live.address[:2], timeout=IO_TIMEOUT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = live.ctx().wrap_bio(self.inc, self.out, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                self._fill()
        self.sock.sendall(self.out.read())  # The client's Finished.

    def _fill(self):
        data = self.sock.recv(65536)
        assert data, "EOF from the server"
        self.inc.write(data)

    def records(self, plain):
        """plain as the encrypted bytes that would be sent."""
        self.tls.write(plain)
        return self.out.read()

    def read_until(self, marker):
        got = b""
        while marker not in got:
            try:
                got += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._fill()
        return got


def test_a_partial_record_waits_without_spinning(tls_serve, kind2):
    """With read-ahead the server takes a whole request record and half of
    the next in one read: the first is answered at once, the half record
    waits for its rest with the loop idle (not fed again and again)."""
    live = tls_serve(kind2)
    c = BioClient(live)
    try:
        one = c.records(get_request("/one"))
        two = c.records(get_request("/two", headers=[("Connection", "close")]))
        half = len(two) // 2
        c.sock.sendall(one + two[:half])
        assert b"ok /one" in c.read_until(b"ok /one")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, t0 = usage.ru_utime + usage.ru_stime, time.monotonic()
        time.sleep(0.5)  # An idle loop burns no CPU while the rest is due.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy = (usage.ru_utime + usage.ru_stime - cpu0) / (time.monotonic() - t0)
        assert busy < 0.3, "the server used %.0f%% of a CPU waiting for a record" % (busy * 100)
        c.sock.sendall(two[half:])
        assert b"ok /two" in c.read_until(b"ok /two")
    finally:
        c.sock.close()
    assert live.app.paths() == ["/one", "/two"]


def test_normal_close_sends_close_notify(tls_serve, kind2):
    """The server's end of a connection is a close_notify alert, then EOF:
    ssl with suppress_ragged_eofs=False raises SSLEOFError otherwise."""
    live = tls_serve(kind2)
    s = tls_socket(live.address, live.ctx(), strict_eof=True)
    with s:
        s.sendall(get_request("/bye", headers=[("Connection", "close")]))
        data = b""
        while True:
            chunk = s.recv(65536)  # Raises SSLEOFError on a truncated close.
            if not chunk:
                break
            data += chunk
        (resp,) = parse_responses(data)
        assert (resp.status, resp.body) == (200, b"ok /bye")
        # The clean EOF means the server's close_notify arrived.
        assert s.pending() == 0


def test_idle_keepalive_connection_ends_with_close_notify(tls_serve, kind2):
    live = tls_serve(kind2, keepalive_timeout=0.5)
    with live.tls_conn() as c:
        c.send(get_request("/one"))
        assert c.read_response().body == b"ok /one"
        t0 = time.monotonic()
        c.assert_closed()  # Strict: SSLEOFError without close_notify.
        elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed <= 2.0, elapsed
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


def test_stop_closes_idle_tls_connections_with_close_notify(tls_serve, kind2):
    live = tls_serve(kind2)
    with live.tls_conn() as c:
        c.send(get_request("/one"))
        assert c.read_response().body == b"ok /one"
        live.srv.stop()
        c.assert_closed()  # Strict: SSLEOFError without close_notify.
    live.wait_returned()


def test_session_resumption(tls_serve, kind2):
    """A second connection resumes the first one's session (tickets / cache)."""
    live = tls_serve(kind2)
    for maxv in (TLSv1_2, TLSv1_3):
        ctx = live.ctx(max_version=maxv)
        with live.tls_conn(ctx) as c:
            c.send(get_request("/first"))
            assert c.read_response().status == 200  # TLS 1.3 tickets come after the handshake.
            session = c.sock.session
            assert not c.sock.session_reused
        assert session is not None
        raw = socket.create_connection(live.address[:2], timeout=IO_TIMEOUT)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(get_request("/second", headers=[("Connection", "close")]))
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            assert s.session_reused, "%s session not resumed" % s.version()


# --- curl -----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_https(tls_serve, kind2, tmp_path):
    live = tls_serve(kind2)
    port = live.port
    url = "https://localhost:%d" % port
    base = ["curl", "-sS", "--max-time", "10", "--resolve", "localhost:%d:127.0.0.1" % port,
            "-w", "\n%{http_code} %{http_version}"]
    body = pattern(200000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    # curl is not ours to sanitize (the ASan run preloads the runtime).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    run = functools.partial(subprocess.run, capture_output=True, timeout=20, env=env)
    out = run(base + ["--cacert", live.pki.ca_pem, url + "/curl"])
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"ok /curl\n200 1.1", out.stdout  # curl offers h2 too: ALPN says http/1.1.
    out = run(base + ["--cacert", live.pki.ca_pem, "--data-binary", "@%s" % upload,
                      "-H", "Content-Type: application/octet-stream", url + "/echo"])
    assert out.returncode == 0, out.stderr
    assert out.stdout == body + b"\n200 1.1"
    # Control: without the CA, curl refuses the certificate (exit 60).
    out = run(base + [url + "/untrusted"])
    assert out.returncode == 60, (out.returncode, out.stderr)
    assert live.app.paths() == ["/curl", "/echo"]


# --- WebSockets over TLS --------------------------------------------------------


class Echo:
    def __init__(self):
        self.opened = []

    def on_open(self, ws):
        self.opened.append(ws.path)

    def on_message(self, ws, msg):
        ws.send(msg)


def page(ex):
    ex.respond(200, [("Content-Type", "text/plain")], b"plain page\n")


def ws_app(environ, start_response):
    ws = environ.get("yimmo.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
        return [b"plain page\n"]
    assert environ["wsgi.url_scheme"] == "https" and environ["HTTPS"] == "on"
    ws.accept()
    while True:
        msg = ws.receive()
        if msg is None:
            break
        ws.send(msg)
    return []


def wss_echo(live):
    """A text, a long text and a 1 MiB binary message echoed over wss://.

    The asyncio client, on purpose: the sync client reads on a background
    thread while the caller writes, and two threads on one ssl.SSLSocket
    race inside OpenSSL (the TLS 1.3 session tickets that follow the
    handshake are read while the upgrade request is written), which stalls
    the client now and then whatever the server does."""
    ctx = live.ctx()
    url = "wss://localhost:%d/ws" % live.port
    data = pattern(MiB, seed=7)

    async def run():
        async with ws_aconnect(url, ssl=ctx, host=live.address[0], port=live.port,
                               max_size=None, proxy=None, open_timeout=IO_TIMEOUT) as c:
            version = c.transport.get_extra_info("ssl_object").version()
            assert version in ("TLSv1.3", "TLSv1.2")
            for msg in ["hello over wss", "héllo €" * 1000]:
                await c.send(msg)
                assert await asyncio.wait_for(c.recv(), IO_TIMEOUT) == msg
            await c.send(data)
            got = await asyncio.wait_for(c.recv(), IO_TIMEOUT)
            assert isinstance(got, bytes)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    asyncio.run(run())


def test_wss_echo_native(tls_serve):
    echo = Echo()
    live = tls_serve("native", page, websocket={"/ws": echo})
    wss_echo(live)
    assert echo.opened == ["/ws"]
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


def test_wss_echo_wsgi(tls_serve):
    live = tls_serve("wsgi-threads", ws_app, validate=False)
    wss_echo(live)
    resp, body = live.request("GET", "/ws")
    assert (resp.status, body) == (200, b"plain page\n")
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


# --- Client certificates -----------------------------------------------------------


@pytest.mark.parametrize("cert_reqs", ["required", ssl.CERT_REQUIRED, "optional"])
def test_client_certificate_verified_and_shown(tls_serve, kind2, pki, cert_reqs):
    live = tls_serve(kind2, tls=pki.tls(cert_reqs=cert_reqs, ca_certs=pki.ca_pem))
    assert_serves(live, "/who", ctx=live.ctx(cert=pki.client))
    info = tls_info(live)
    assert info["peer_subject"] == pki.client.subject, (info["peer_subject"], pki.client.subject)
    assert info["peer_cert"] == pki.client.der
    assert "CN=client one" in info["peer_subject"]
    if live.flavour == "wsgi":
        assert info["verify"] == "SUCCESS"
        assert info["issuer"] == pki.client.issuer, (info["issuer"], pki.client.issuer)


# TLS 1.2 clients learn of the refusal in the handshake; TLS 1.3 clients have
# finished theirs when the server checks the certificate, so a read fails.
CLIENT_VERSIONS = pytest.mark.parametrize("maxv", [TLSv1_2, TLSv1_3], ids=["tls1.2", "tls1.3"])


@CLIENT_VERSIONS
def test_client_certificate_required_and_missing_is_refused(tls_serve, kind2, pki, maxv):
    live = tls_serve(kind2, tls=pki.tls(cert_reqs="required", ca_certs=pki.ca_pem))
    phase, err = refused(live, live.ctx(max_version=maxv))
    if maxv == TLSv1_2:
        assert phase == "handshake" and isinstance(err, ssl.SSLError), (phase, err)
    assert live.app.paths() == []
    assert_serves(live, "/with-cert", ctx=live.ctx(cert=pki.client))  # The server is fine.


@CLIENT_VERSIONS
@pytest.mark.parametrize("cert_reqs", ["required", "optional"])
def test_client_certificate_from_a_foreign_ca_is_refused(tls_serve, kind2, pki, cert_reqs, maxv):
    live = tls_serve(kind2, tls=pki.tls(cert_reqs=cert_reqs, ca_certs=pki.ca_pem))
    phase, err = refused(live, live.ctx(cert=pki.foreign_client, max_version=maxv))
    if maxv == TLSv1_2:
        assert phase == "handshake" and isinstance(err, ssl.SSLError), (phase, err)
    assert live.app.paths() == []
    assert_serves(live, "/with-cert", ctx=live.ctx(cert=pki.client))


def test_client_certificate_optional_and_missing_is_served(tls_serve, kind2, pki):
    live = tls_serve(kind2, tls=pki.tls(cert_reqs="optional", ca_certs=pki.ca_pem))
    assert_serves(live, "/anonymous")
    info = tls_info(live)
    assert (info["peer_cert"], info["peer_subject"]) == (None, None)
    if live.flavour == "wsgi":
        assert info["verify"] == "NONE"
        assert "SSL_CLIENT_S_DN" not in live.app.last() and "SSL_CLIENT_CERT" not in live.app.last()


def test_client_certificate_not_asked_for_is_not_shown(tls_serve, kind2, pki):
    """cert_reqs "none": a client certificate is not requested, so none shows up."""
    live = tls_serve(kind2, tls=pki.tls(ca_certs=pki.ca_pem))
    assert_serves(live, "/none", ctx=live.ctx(cert=pki.client))
    info = tls_info(live)
    assert (info["peer_cert"], info["peer_subject"]) == (None, None)


# --- Protocol versions -----------------------------------------------------------


@pytest.fixture(scope="session")
def old_tls_client_works(pki):
    """Whether this OpenSSL can speak TLS 1.0/1.1 at all (a permissive
    Python server over a socketpair): else the refusal proves nothing."""
    import warnings
    result = {}
    for maxv in (TLSv1, TLSv1_1):
        srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            srv.minimum_version = TLSv1
        srv.set_ciphers("DEFAULT:@SECLEVEL=0")
        srv.load_cert_chain(pki.server.cert, pki.server.key)
        cli = old_client(pki, maxv)
        a, b = socket.socketpair()
        a.settimeout(IO_TIMEOUT)
        b.settimeout(IO_TIMEOUT)
        got = {}

        def serve():
            try:
                with srv.wrap_socket(a, server_side=True) as s:
                    got["server"] = s.version()
            except Exception as e:
                got["server"] = e

        t = threading.Thread(target=serve)
        t.start()
        try:
            with cli.wrap_socket(b, server_hostname="localhost") as s:
                got["client"] = s.version()
        except Exception as e:
            got["client"] = e
        t.join(IO_TIMEOUT)
        a.close()
        result[maxv] = got.get("client") == {TLSv1: "TLSv1", TLSv1_1: "TLSv1.1"}[maxv]
    return result


def old_client(pki, maxv):
    return client_context(pki.ca_pem, min_version=TLSv1, max_version=maxv,
                          ciphers="DEFAULT:@SECLEVEL=0")


@pytest.mark.parametrize("maxv", [TLSv1, TLSv1_1], ids=["tls1.0", "tls1.1"])
def test_tls_1_0_and_1_1_are_refused(tls_serve, kind2, pki, maxv, old_tls_client_works):
    if not old_tls_client_works[maxv]:
        pytest.skip("this OpenSSL will not speak %s even to a permissive server" % maxv.name)
    live = tls_serve(kind2)
    phase, err = refused(live, old_client(pki, maxv))
    assert phase == "handshake", err
    assert isinstance(err, (ssl.SSLError, ConnectionError)), repr(err)
    assert_serves(live)


def test_min_version_1_3_refuses_a_tls_1_2_client(tls_serve, kind2, pki):
    live = tls_serve(kind2, tls=pki.tls(min_version="1.3"))
    phase, err = refused(live, live.ctx(max_version=TLSv1_2))
    assert phase == "handshake" and isinstance(err, (ssl.SSLError, ConnectionError)), (phase, err)
    assert_serves(live, "/tls13", ctx=live.ctx(min_version=TLSv1_3))
    assert tls_info(live)["version"] == "TLSv1.3"


def test_tls_1_2_client_is_served_by_default(tls_serve, kind2):
    live = tls_serve(kind2)
    with live.tls_conn(live.ctx(max_version=TLSv1_2)) as c:
        assert c.sock.version() == "TLSv1.2"
        cipher = c.sock.cipher()[0]
        c.send(get_request("/tls12", headers=[("Connection", "close")]))
        assert c.read_response().body == b"ok /tls12"
        c.assert_closed()
    info = tls_info(live)
    assert (info["version"], info["cipher"]) == ("TLSv1.2", cipher)


def test_ciphers_setting_is_applied_to_tls_1_2(tls_serve, kind2, pki):
    chosen = "ECDHE-ECDSA-AES128-GCM-SHA256"  # trustme's keys are ECDSA.
    live = tls_serve(kind2, tls=pki.tls(ciphers=chosen))
    with live.tls_conn(live.ctx(max_version=TLSv1_2)) as c:
        assert c.sock.cipher()[0] == chosen
    only_other = live.ctx(max_version=TLSv1_2, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
    phase, err = refused(live, only_other)
    assert phase == "handshake", err


def test_tls13_prefers_aes_128_gcm(tls_serve):
    """The server's TLS 1.3 order wins (Mozilla's: AES-128-GCM first), even
    for a client that lists AES-256-GCM first, as Python's does."""
    live = tls_serve("native")
    ctx = live.ctx()
    offered = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]
    assert offered[0] == "TLS_AES_256_GCM_SHA384", offered
    with live.tls_conn(ctx) as c:
        assert c.sock.version() == "TLSv1.3"
        assert c.sock.cipher()[0] == "TLS_AES_128_GCM_SHA256"


# --- ALPN ---------------------------------------------------------------------------


def test_alpn_h2_and_http11_gets_http11(tls_serve, kind2):
    live = tls_serve(kind2)
    with live.tls_conn(live.ctx(alpn=["h2", "http/1.1"])) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        c.send(get_request("/alpn"))
        assert c.read_response().body == b"ok /alpn"
    if live.flavour == "native":
        assert tls_info(live)["alpn"] == "http/1.1"


def test_alpn_only_h2_is_refused(tls_serve, kind2):
    live = tls_serve(kind2)
    phase, err = refused(live, live.ctx(alpn=["h2"]))
    assert phase == "handshake", err
    # RFC 7301 3.2: the no_application_protocol alert.
    assert "no application protocol" in str(err).lower().replace("_", " "), err
    assert_serves(live)


def test_alpn_follows_the_servers_preference_order(tls_serve, pki):
    live = tls_serve("native", tls=pki.tls(alpn=["x-first", "http/1.1"]))
    with live.tls_conn(live.ctx(alpn=["http/1.1", "x-first"])) as c:
        assert c.sock.selected_alpn_protocol() == "x-first"
        c.send(get_request("/pref"))
        assert c.read_response().body == b"ok /pref"
    assert tls_info(live)["alpn"] == "x-first"
    with live.tls_conn(live.ctx(alpn=["http/1.1"])) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
    phase, err = refused(live, live.ctx(alpn=["x-other"]))
    assert phase == "handshake", err


def test_no_alpn_offered_is_served(tls_serve, kind2):
    live = tls_serve(kind2)
    with live.tls_conn() as c:
        assert c.sock.selected_alpn_protocol() is None
        c.send(get_request("/no-alpn"))
        assert c.read_response().body == b"ok /no-alpn"
    if live.flavour == "native":
        assert tls_info(live)["alpn"] is None


# --- SNI -------------------------------------------------------------------------------


SNI_CASES = [
    # (client's server name, certificate expected, hostname checking possible)
    ("other.test", "other", True),
    ("localhost", "server", True),
    ("unknown.test", "server", False),
    (None, "server", False),
    ("a.wild.test", "wild", True),
    ("a.b.wild.test", "server", False),  # RFC 6125 6.4.3: "*" is one label.
    ("wild.test", "server", False),
]


@pytest.mark.parametrize("name, which, check", SNI_CASES, ids=[str(c[0]) for c in SNI_CASES])
def test_sni_picks_the_certificate(tls_serve, kind2, pki, name, which, check):
    live = tls_serve(kind2, tls=pki.tls(sni=[
        {"certfile": pki.other.cert, "keyfile": pki.other.key},
        {"certfile": pki.wild.cert, "keyfile": pki.wild.key}]))
    with live.tls_conn(live.ctx(check_hostname=check), server_hostname=name) as c:
        der = c.sock.getpeercert(binary_form=True)
        c.send(get_request("/sni"))
        assert c.read_response().body == b"ok /sni"
    names = {pki.other.der: "other", pki.server.der: "server", pki.wild.der: "wild"}
    assert names.get(der, "?") == which
    info = tls_info(live)
    assert info["server_name"] == name
    if live.flavour == "wsgi" and name is None:
        assert "SSL_TLS_SNI" not in live.app.last()


def test_sni_certificate_subject_alt_names(tls_serve, pki):
    """The other.test certificate really carries other.test (getpeercert's view)."""
    live = tls_serve("native", tls=pki.tls(sni=[{"certfile": pki.other.pem}]))
    with live.tls_conn(server_hostname="other.test") as c:
        assert c.sock.getpeercert()["subjectAltName"] == (("DNS", "other.test"),)
    with live.tls_conn(server_hostname="localhost") as c:
        sans = c.sock.getpeercert()["subjectAltName"]
    assert ("DNS", "localhost") in sans and ("IP Address", "127.0.0.1") in sans, sans


def sent_chain(live):
    """The certificates the server sends, as openssl s_client shows them."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(["openssl", "s_client", "-showcerts", "-connect", "127.0.0.1:%d" % live.port,
                          "-servername", "localhost"], input=b"", capture_output=True,
                         timeout=20, env=env)
    assert b"BEGIN CERTIFICATE" in out.stdout, out.stderr
    return re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out.stdout,
                      re.S)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("certfile, ca_certs, expect", [
    ("leaf", None, ["leaf"]),
    ("leaf", "ca", ["leaf", "ca"]),        # issuers found in the verify store are sent
    ("leaf+ca", None, ["leaf", "ca"]),
    ("leaf+ca", "ca2", ["leaf", "ca"]),    # a chain given is sent as given
])
def test_certificate_chain_sent(tls_serve, pki, tmp_path, certfile, ca_certs, expect):
    """The chain is built once at start-up, as OpenSSL would on each handshake."""
    pems = {"leaf": pki.server.leaf.cert_chain_pems[0].bytes(), "ca": pki.ca.cert_pem.bytes()}
    path = tmp_path / "chain.pem"
    path.write_bytes(b"".join(pems[p] for p in certfile.split("+")))
    cafile = {None: None, "ca": pki.ca_pem, "ca2": pki.ca2_pem}[ca_certs]
    live = tls_serve("native", tls=pki.tls(certfile=str(path), ca_certs=cafile))
    for _ in range(2):
        got = sent_chain(live)
        assert [b.strip() for b in got] == [pems[e].strip() for e in expect]
    assert_serves(live)


# --- Big bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_8mib_post_is_echoed(tls_serve, kind3, framing):
    live = tls_serve(kind3)
    body = pattern(8 * MiB, seed=8)
    conn = live.https()
    try:
        if framing == "chunked":
            parts = (body[i:i + 100000] for i in range(0, len(body), 100000))
            conn.request("POST", "/echo", body=parts, encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked"})
        else:
            conn.request("POST", "/echo", body=body)
        resp = conn.getresponse()
        got = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert len(got) == len(body) and hashlib.sha256(got).digest() == hashlib.sha256(body).digest()


def test_4mib_response_from_a_list_body(tls_serve, kind3):
    live = tls_serve(kind3)
    resp, got = live.request("GET", "/big?n=%d" % (4 * MiB))
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == 4 * MiB
    assert hashlib.sha256(got).digest() == hashlib.sha256(pattern(4 * MiB)).digest()


@pytest.mark.parametrize("kind", ["wsgi", "wsgi-threads"])
@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_4mib_file_wrapper_response(tls_serve, kind, length, tmp_path):
    """wsgi.file_wrapper over TLS: read and encrypted in user space (no sendfile)."""
    data = pattern(4 * MiB + 123, seed=4)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    closed = []

    class Tracked:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            return self.f.read(n)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            closed.append(True)
            self.f.close()

    def app(environ, start_response):
        headers = [("Content-Type", "application/octet-stream")]
        if length:
            headers.append(("Content-Length", str(len(data))))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](Tracked(open(path, "rb")), 65536)

    live = tls_serve(kind, app, validate=False)
    with live.tls_conn() as c:
        c.send(get_request("/file"))
        resp = c.read_response()
        assert resp.status == 200 and resp.chunked == (not length)
        assert len(resp.body) == len(data)
        assert hashlib.sha256(resp.body).digest() == hashlib.sha256(data).digest()
        c.send(get_request("/again"))  # The connection is still in step.
        assert c.read_response().body == data
    assert wait_for(lambda: closed), "the file was not closed"


def test_chunked_streaming_of_many_small_chunks(tls_serve, kind3):
    n = 20000
    # Reading 20,000 chunks takes a while under valgrind: the keep-alive
    # timeout must not end the connection before the next request.
    live = tls_serve(kind3, keepalive_timeout=60)
    with live.tls_conn() as c:
        c.send(get_request("/chunks?n=%d" % n))
        resp = c.read_response()
        c.send(get_request("/next", headers=[("Connection", "close")]))
        after = c.read_response()
        c.assert_closed()
    assert resp.status == 200 and resp.chunked
    assert resp.body == b"".join(b"%06d\n" % i for i in range(n))
    assert after.body == b"ok /next"


def test_client_reset_mid_response(tls_serve, kind3):
    live = tls_serve(kind3)
    c = live.tls_conn(rcvbuf=16384)
    c.send(get_request("/big?n=%d" % (16 * MiB)))
    assert c.read_head().status == 200
    c.reset()
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections
    assert_serves(live)


@pytest.mark.parametrize("kind", ["native", "wsgi-threads"])
def test_concurrent_tls_clients(tls_serve, kind):
    live = tls_serve(kind)
    ctx = live.ctx()
    errors = []

    def client(i):
        try:
            conn = live.https(ctx)
            try:
                for j in range(5):
                    body = b"%d-%d;" % (i, j) * (1 + 97 * i)
                    conn.request("POST", "/echo", body=body)
                    resp = conn.getresponse()
                    assert (resp.status, resp.read()) == (200, body)
            finally:
                conn.close()
        except BaseException as e:
            errors.append((i, e))

    clients = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(20)
    assert not [t for t in clients if t.is_alive()], "clients still running"
    assert not errors, errors[:3]
    assert len(live.app.paths()) == 200
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


def test_tls_over_ipv6(tls_serve, pki):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    live = tls_serve("native", host="::1")
    with live.tls_conn(server_hostname="::1") as c:  # Verified against the IP SAN; no SNI.
        c.send(get_request("/v6"))
        assert c.read_response().body == b"ok /v6"
    assert tls_info(live)["server_name"] is None


@rss_meaningful
@pytest.mark.parametrize("kind", ["wsgi", "wsgi-threads"])
def test_slow_tls_reader_is_paused_not_buffered(tls_serve, kind):
    """64 MiB streamed in 64 KiB blocks to a client that stops reading: the
    producer is paused (RSS stays bounded), then everything arrives."""
    block = pattern(64 * 1024, seed=64)
    blocks = 1024
    produced = {"n": 0}

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/stream":
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(blocks * len(block)))])

        def stream():
            for _ in range(blocks):
                produced["n"] += 1
                yield block
        return stream()

    live = tls_serve(kind, app, validate=False)
    assert live.request("GET", "/warm")[0].status == 200
    gc.collect()
    base = rss()
    with live.tls_conn(rcvbuf=16384, timeout=10) as c:
        c.send(get_request("/stream"))
        head = c.read_head()
        assert head.status == 200
        stalled = wait_stalled(lambda: produced["n"]) * len(block)
        growth = rss() - base
        assert stalled < 16 * MiB, "%d MiB produced for a client that is not reading" % (stalled // MiB)
        assert growth < 32 * MiB, "RSS grew %.1f MiB" % (growth / MiB)
        # Other clients are served meanwhile.
        t0 = time.monotonic()
        assert live.request("GET", "/other")[0].status == 200
        assert time.monotonic() - t0 < 1.0
        # Now read it all.
        want = blocks * len(block)
        h = hashlib.sha256(bytes(c.buf))
        got = len(c.buf)
        c.buf.clear()
        buf = bytearray(1 << 18)
        while got < want:
            n = c.sock.recv_into(buf)
            assert n, "EOF after %d of %d bytes" % (got, want)
            h.update(memoryview(buf)[:n])
            got += n
        assert got == want
        expect = hashlib.sha256()
        for _ in range(blocks):
            expect.update(block)
        assert h.digest() == expect.digest()
        c.send(get_request("/after", headers=[("Connection", "close")]))
        assert c.read_response().body == b"ok"
    assert produced["n"] == blocks


# --- What is not TLS on a TLS port ------------------------------------------------------


def test_plain_http_on_a_tls_port_gets_a_clear_text_400(tls_serve, kind2):
    live = tls_serve(kind2)
    with RawConn(live.address) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = c.read_response()
        c.assert_closed()
    assert (resp.version, resp.status) == ("HTTP/1.1", 400), resp
    assert resp.has_token("connection", "close")
    assert resp.header("content-type", "").startswith("text/plain")
    assert b"https" in resp.body.lower(), resp.body
    assert live.app.paths() == []
    assert_serves(live)


def test_garbage_on_a_tls_port_closes_only_that_connection(tls_serve, kind2):
    live = tls_serve(kind2)
    keep = live.https()
    try:
        keep.request("GET", "/before")
        assert keep.getresponse().read() == b"ok /before"
        with RawConn(live.address) as c:
            c.send(b"\x00\x01garbage")
            data = c.read_to_eof()
        assert not data.startswith(b"HTTP/") and (data == b"" or data[0] == 0x15), data[:100]
        keep.request("GET", "/still")  # The open TLS connection is untouched.
        assert keep.getresponse().read() == b"ok /still"
    finally:
        keep.close()
    assert_serves(live)
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


def real_client_hello():
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:20]
    return hello


# A record header and handshake header announcing a 508-byte ClientHello, then 9 random bytes.
SYNTHETIC_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"

TRUNCATIONS = {
    "synthetic-20-bytes": lambda: SYNTHETIC_HELLO_START + os.urandom(9),
    "real-20-bytes": lambda: real_client_hello()[:20],
    "real-all-but-one-byte": lambda: real_client_hello()[:-1],
}


@pytest.mark.parametrize("make", list(TRUNCATIONS.values()), ids=list(TRUNCATIONS))
def test_truncated_client_hello_then_close(tls_serve, kind2, make):
    live = tls_serve(kind2)
    for _ in range(10):
        with socket.create_connection(live.address[:2], timeout=IO_TIMEOUT) as s:
            s.sendall(make())
    assert_serves(live)
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


STALLS = {
    "nothing": lambda: b"",
    "real-20-bytes": lambda: real_client_hello()[:20],
    "real-all-but-one-byte": lambda: real_client_hello()[:-1],
    "whole-hello-no-finished": real_client_hello,  # The server answers, the client never finishes.
}


@pytest.mark.parametrize("make", list(STALLS.values()), ids=list(STALLS))
def test_stalled_handshake_is_closed_after_header_timeout(tls_serve, kind2, make):
    live = tls_serve(kind2, header_timeout=0.5, keepalive_timeout=30.0)
    sent = make()
    with RawConn(live.address, timeout=5.0) as c:
        t0 = time.monotonic()
        if sent:
            c.send(sent)
        data = c.read_to_eof()  # The server closes it: a timeout fails here.
        elapsed = time.monotonic() - t0
    # Nothing, or TLS records (the server's flight, an alert); never clear-text HTTP.
    assert data == b"" or data[0] in (0x15, 0x16), data[:100]
    assert 0.4 <= elapsed <= 2.0, elapsed
    assert_serves(live)
    assert wait_for(lambda: live.srv.connections == 0), live.srv.connections


def test_stalled_request_head_after_handshake_is_cut_off(tls_serve, kind2):
    """Past the handshake, header_timeout still bounds a head that never ends."""
    live = tls_serve(kind2, header_timeout=0.5, keepalive_timeout=30.0)
    with live.tls_conn(timeout=5.0) as c:
        t0 = time.monotonic()
        c.send(b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        data = c.read_to_eof()
        elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed <= 2.0, elapsed
    if data:
        (resp,) = parse_responses(data)
        assert resp.status == 408 and resp.has_token("connection", "close"), data
    assert live.app.paths() == []


# --- reload_tls -------------------------------------------------------------------------------


def peer_der(conn):
    return conn.sock.getpeercert(binary_form=True)


def test_reload_tls_new_connections_get_the_new_certificate(tls_serve, kind2, pki):
    live = tls_serve(kind2)
    old = live.https()
    try:
        old.request("GET", "/one")
        assert old.getresponse().read() == b"ok /one"
        assert peer_der(old) == pki.server.der
        live.srv.reload_tls({"certfile": pki.server_b.pem})
        # The open connection keeps working (and keeps its certificate).
        old.request("GET", "/two")
        assert old.getresponse().read() == b"ok /two"
        ports = [tls_info_at(live, i)["port"] for i in range(2)]
        assert ports[0] == ports[1], "the old connection was dropped and redialled"
        new = live.https()
        try:
            new.request("GET", "/three")
            assert new.getresponse().read() == b"ok /three"
            assert peer_der(new) == pki.server_b.der
        finally:
            new.close()
        # A client trusting only the first CA now fails verification.
        phase, err = refused(live, client_context(pki.ca_pem))
        assert phase == "handshake" and isinstance(err, ssl.SSLCertVerificationError), err
        old.request("GET", "/four")
        assert old.getresponse().read() == b"ok /four"
    finally:
        old.close()


def test_reload_tls_settings_apply_to_new_connections_only(tls_serve, kind2, pki):
    live = tls_serve(kind2)
    old = live.https()
    try:
        old.request("GET", "/one")
        assert old.getresponse().read() == b"ok /one"
        live.srv.reload_tls(pki.tls(cert_reqs="required", ca_certs=pki.ca_pem))
        refused(live, live.ctx())  # New connections need a client certificate now...
        old.request("GET", "/two")  # ...the open one, made without, keeps working.
        assert old.getresponse().read() == b"ok /two"
        assert_serves(live, "/with-cert", ctx=live.ctx(cert=pki.client))
        assert tls_info(live)["peer_subject"] == pki.client.subject
        live.srv.reload_tls(pki.tls())
        assert_serves(live, "/open-again")
    finally:
        old.close()


def test_reload_tls_under_traffic(tls_serve, kind2, pki):
    """Reloads from another thread while clients connect: every handshake
    sees one whole configuration, A or B, and nothing fails."""
    live = tls_serve(kind2)
    ctx = live.ctx()
    seen, errors = [], []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                conn = live.https(ctx)
                try:
                    conn.request("GET", "/t")
                    assert conn.getresponse().read() == b"ok /t"
                    seen.append(peer_der(conn))
                finally:
                    conn.close()
            except BaseException as e:
                errors.append(e)
                return

    clients = [threading.Thread(target=traffic) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        for i in range(40):
            live.srv.reload_tls({"certfile": (pki.server_b if i % 2 == 0 else pki.server).pem})
            wait_for(lambda n=len(seen): len(seen) > n, timeout=2)
    finally:
        stop.set()
        for t in clients:
            t.join(10)
    assert not errors, errors[:3]
    assert set(seen) == {pki.server.der, pki.server_b.der}, len(seen)


@pytest.mark.parametrize("bad, exc", [
    (lambda p: {"certfile": os.path.join(p.dir, "missing.pem")}, OSError),
    (lambda p: {"certfile": p.server_b.cert, "keyfile": p.other.key}, ValueError),
    (lambda p: p.tls(ciphers="NOPE-NOT-A-CIPHER"), ValueError),
    (lambda p: p.tls(bogus=1), TypeError),
], ids=["missing-file", "key-mismatch", "bad-ciphers", "unknown-key"])
def test_bad_reload_raises_and_keeps_the_old_certificate(tls_serve, kind2, pki, bad, exc):
    live = tls_serve(kind2, tls={"certfile": pki.server_b.pem})
    with pytest.raises(exc) as info:
        live.srv.reload_tls(bad(pki))
    if exc is OSError:
        assert "missing.pem" in str(info.value)
    conn = live.https()
    try:
        conn.request("GET", "/still")
        assert conn.getresponse().read() == b"ok /still"
        assert peer_der(conn) == pki.server_b.der
    finally:
        conn.close()


# --- Configuration errors --------------------------------------------------------------------


def _garbage_pem(p):
    path = os.path.join(p.dir, "garbage.pem")
    with open(path, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return path


# (id, tls dict from the pki, exception, any of these in the message)
BAD_CONFIGS = [
    ("missing-certfile", lambda p: {"certfile": os.path.join(p.dir, "nope.pem")}, OSError,
     ["nope.pem"]),
    ("missing-keyfile", lambda p: {"certfile": p.server.cert, "keyfile": os.path.join(p.dir, "nope.key")},
     OSError, ["nope.key"]),
    ("missing-ca-certs", lambda p: p.tls(cert_reqs="required", ca_certs=os.path.join(p.dir, "nope-ca.pem")),
     OSError, ["nope-ca.pem"]),
    ("missing-sni-certfile", lambda p: p.tls(sni=[{"certfile": os.path.join(p.dir, "nope-sni.pem")}]),
     OSError, ["nope-sni.pem"]),
    ("not-a-pem", lambda p: {"certfile": _garbage_pem(p), "keyfile": p.server.key}, ValueError,
     ["garbage.pem"]),
    ("key-does-not-match", lambda p: {"certfile": p.server.cert, "keyfile": p.other.key}, ValueError,
     ["other.key' does not match certfile"]),
    ("bad-ciphers", lambda p: p.tls(ciphers="NOPE-NOT-A-CIPHER"), ValueError, ["cipher"]),
    ("required-without-ca", lambda p: p.tls(cert_reqs="required"), ValueError, ["ca_certs"]),
    ("optional-without-ca", lambda p: p.tls(cert_reqs="optional"), ValueError, ["ca_certs"]),
    ("bad-cert-reqs", lambda p: p.tls(cert_reqs="maybe"), ValueError, ["cert_reqs"]),
    ("bad-min-version", lambda p: p.tls(min_version="1.1"), ValueError, ["min_version"]),
    ("unknown-key", lambda p: p.tls(bogus=1), TypeError, ["bogus"]),
    ("wrong-password", lambda p: {"certfile": p.server.cert, "keyfile": p.encrypted_key,
                                  "password": "wrong"}, ValueError, ["password", "server-encrypted.key"]),
    ("no-password", lambda p: {"certfile": p.server.cert, "keyfile": p.encrypted_key}, ValueError,
     ["password", "server-encrypted.key"]),
]


@pytest.mark.parametrize("make, exc, words", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_configuration_is_refused_everywhere(pki, make, exc, words):
    cfg = make(pki)
    gc.collect()
    fds = open_fds()
    for what, call in [("check_tls", lambda: yimmo.check_tls(cfg)),
                       ("Server", lambda: yimmo.Server(page, port=0, tls=cfg)),
                       ("WSGIServer", lambda: yimmo.WSGIServer(ws_app, port=0, tls=cfg))]:
        with pytest.raises(exc) as info:
            call()
        msg = str(info.value)
        assert any(w in msg for w in words), "%s: %r names none of %r" % (what, msg, words)
        assert "\n" not in msg.strip(), (what, msg)
    gc.collect()
    assert open_fds() <= fds, "a refused configuration leaked file descriptors"


@pytest.mark.parametrize("password", [KEY_PASSWORD, KEY_PASSWORD.encode()], ids=["str", "bytes"])
def test_encrypted_key_with_the_right_password_serves(tls_serve, kind2, pki, password):
    cfg = {"certfile": pki.server.cert, "keyfile": pki.encrypted_key, "password": password}
    assert yimmo.check_tls(cfg) is None
    live = tls_serve(kind2, tls=cfg)
    assert_serves(live, "/encrypted")


def test_good_configurations_check(pki):
    for cfg in [pki.tls(), {"certfile": pki.server.pem},
                pki.tls(cert_reqs="optional", ca_certs=pki.ca_pem, min_version="1.3",
                        alpn=["http/1.1"], ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                        sni=[{"certfile": pki.other.cert, "keyfile": pki.other.key}]),
                pki.tls(cert_reqs=ssl.CERT_REQUIRED, ca_certs=pki.ca_pem)]:
        assert yimmo.check_tls(cfg) is None, cfg


def test_tls_listener_without_tls_config_is_a_value_error():
    s = socket.create_server(("127.0.0.1", 0))
    try:
        for cls, app in [(yimmo.Server, page), (yimmo.WSGIServer, ws_app)]:
            with pytest.raises(ValueError):
                cls(app, sock=[(s, True)])
    finally:
        s.close()


# --- One server, a plain and a TLS listener -----------------------------------------------------


def close_listener(s):
    try:
        os.fstat(s.fileno())
    except OSError:
        s.detach()  # The server closed it already.
        return
    s.close()


def test_plain_and_tls_listeners_on_one_server(tls_serve, kind2, pki):
    plain = socket.create_server(("127.0.0.1", 0))
    secure = socket.create_server(("127.0.0.1", 0))
    plain_addr, secure_addr = plain.getsockname(), secure.getsockname()
    try:
        live = tls_serve(kind2, sock=[(plain, False), (secure, True)])
        # http on the plain port.
        with RawConn(plain_addr) as c:
            c.send(get_request("/plain", headers=[("Connection", "close")]))
            resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"ok /plain")
        info = live.app.last()
        if live.flavour == "native":
            assert info["tls"] is None
        else:
            assert info["wsgi.url_scheme"] == "http", info
            assert not [k for k in info if k.startswith("SSL_") or k == "HTTPS"], info
        # https on the TLS port.
        with tls_conn(secure_addr, live.ctx()) as c:
            c.send(get_request("/secure", headers=[("Connection", "close")]))
            resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"ok /secure")
        assert tls_info(live)["version"] == "TLSv1.3"
        # Each port speaks only its own protocol.
        with RawConn(secure_addr) as c:
            c.send(get_request("/wrong"))
            assert c.read_response().status == 400
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_socket(plain_addr, live.ctx()).close()
        assert live.app.paths() == ["/plain", "/secure"]
        live.stop_and_wait()
    finally:
        close_listener(plain)
        close_listener(secure)


# --- The hardening rules, over TLS ---------------------------------------------------------------

HARDENING = ["cl-then-te", "te-then-cl", "two-cl-different", "cl-letters", "cl-overflow-2e64",
             "te-gzip-only", "te-unknown-then-chunked", "te-chunked-chunked", "size-not-hex",
             "data-longer-than-size", "obs-fold-space", "bare-lf-ends-request-line", "nul-in-value",
             "name-nul", "host-twice-different", "method-leading-space", "target-space-inside",
             "http-2.0", "version-binary", "http-0.9-simple-request"]
HARDENING_LIMITS = ["request-line", "one-field", "header-bytes", "header-count", "content-length",
                    "chunk-size-over-max"]
_rules = {r[0]: r for r in RULES}
_limit_rules = {r[0]: r for r in LIMIT_RULES}
CASES = ([_rules[n] + ({},) for n in HARDENING] + [_limit_rules[n] + (LIMITS,) for n in HARDENING_LIMITS])


@pytest.mark.parametrize("data, status, limits", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_over_tls_is_rejected_and_closed(tls_serve, kind2, data, status, limits):
    live = tls_serve(kind2, **limits)
    live.expect_errors = True  # Checked here.
    with live.tls_conn(timeout=3.0) as c:
        c.send(data + SMUGGLED)
        raw = c.read_to_eof()  # Fails on timeout; strict about close_notify.
    responses = parse_responses(raw)
    assert [r.status for r in responses] == [status], raw[:600]
    assert responses[0].has_token("connection", "close"), raw[:600]
    assert live.app.paths() == [], live.app.paths()
    assert not live.log.errors(), [r.getMessage() for r in live.log.errors()]
    assert_serves(live)


SIGPIPE_SERVER = r'''
import signal, sys, yimmo
signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as a C embedder or a CLI tool might
big = b"x" * (8 << 20)
srv = yimmo.Server(lambda ex: ex.respond(200, [], big if ex.path == "/big" else b"ok"),
                   port=0, tls={"certfile": sys.argv[1], "keyfile": sys.argv[2]})
print(srv.address[1], flush=True)
srv.run()
'''


def test_peer_reset_does_not_raise_sigpipe(pki):
    """A client that resets mid-response must not kill a process that does
    not ignore SIGPIPE: TLS writes go out with MSG_NOSIGNAL, as plain ones."""
    # -P: the yimmo this test run imports (PYTHONPATH), not the checkout's.
    p = subprocess.Popen([sys.executable, "-P", "-c", SIGPIPE_SERVER, pki.server.cert,
                          pki.server.key], stdout=subprocess.PIPE, text=True)
    try:
        port = int(p.stdout.readline())
        ctx = client_context(pki.ca_pem)
        for i in range(20):
            c = tls_conn(("127.0.0.1", port), ctx, rcvbuf=16384)
            c.send(get_request("/big"))
            if i % 2:
                c.reset()       # RST at once
            else:
                c.close()       # FIN with the response unread: the kernel resets
        c = tls_conn(("127.0.0.1", port), ctx)
        c.send(get_request("/"))
        assert c.read_head().status == 200
        c.close()
        assert p.poll() is None, "the server died: %r" % p.returncode
    finally:
        p.terminate()
        p.wait(IO_TIMEOUT)


def test_response_head_and_body_leave_in_one_record(tls_serve, kind2):
    """OpenSSL has no writev: the server gathers a response head and a small
    body into one SSL_write, so they travel in one TLS record. Counted on the
    wire under TLS 1.2, whose record types are in clear."""
    live = tls_serve(kind2)
    ctx = live.ctx(max_version=ssl.TLSVersion.TLSv1_2)
    raw = socket.create_connection(live.address[:2], timeout=IO_TIMEOUT)
    with raw:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(out.read())
                data = raw.recv(65536)
                assert data, "EOF during the handshake"
                inc.write(data)
        raw.sendall(out.read())
        # A short body is copied behind the head; a 10 KB one is referenced
        # (a second iovec), and still shares the head's record.
        for path, expect in (("/one", b"ok /one"), ("/big?n=10000", pattern(10000))):
            tls.write(get_request(path))
            raw.sendall(out.read())
            wire, plain, records = b"", b"", []
            while True:
                while len(wire) < 5 or len(wire) < 5 + int.from_bytes(wire[3:5], "big"):
                    data = raw.recv(65536)
                    assert data, "EOF before the response"
                    wire += data
                n = 5 + int.from_bytes(wire[3:5], "big")
                records.append(wire[0])
                inc.write(wire[:n])
                wire = wire[n:]
                try:
                    plain += tls.read(65536)
                except ssl.SSLWantReadError:
                    pass
                head, sep, body = plain.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head + b"\r\n")
                if sep and length and len(body) >= int(length.group(1)):
                    break
            assert plain.startswith(b"HTTP/1.1 200 ") and body == expect
            assert records == [23], records     # one application_data record
            assert wire == b""


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_renegotiation_is_refused(tls_serve):
    """A TLS 1.2 client asking to renegotiate (openssl s_client's R command)
    gets the no_renegotiation alert; the server goes on serving."""
    live = tls_serve("native")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    p = subprocess.Popen(["openssl", "s_client", "-connect", "127.0.0.1:%d" % live.port,
                          "-tls1_2", "-servername", "localhost", "-CAfile", live.pki.ca_pem],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=env)
    try:
        seen = []
        for line in p.stdout:   # The session summary ends the handshake's output.
            seen.append(line)
            if line.strip().startswith(b"Verify return code:"):
                break
        assert b"Verify return code: 0 (ok)" in b"".join(seen), b"".join(seen)
        p.stdin.write(b"R\n")
        p.stdin.flush()
        out = p.communicate(timeout=IO_TIMEOUT)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert b"RENEGOTIATING" in out and b"no renegotiation" in out, out
    resp, body = live.request("GET", "/after")
    assert (resp.status, body) == (200, b"ok /after")


def _ssl_pointer(tls_sock):
    """The SSL * under a Python ssl socket (CPython's PySSLSocket: the object
    head, the socket, then the SSL *), to send what the ssl module cannot;
    None when that is not what it finds."""
    import ctypes
    try:
        libssl = ctypes.CDLL("libssl.so.3")
    except OSError:
        return None, None
    libssl.SSL_version.argtypes = [ctypes.c_void_p]
    libssl.SSL_is_server.argtypes = [ctypes.c_void_p]
    libssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libssl.SSL_do_handshake.argtypes = [ctypes.c_void_p]
    p = ctypes.c_void_p.from_address(id(tls_sock._sslobj) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    if not p or libssl.SSL_version(p) != 0x0304 or libssl.SSL_is_server(p) != 0:
        return None, None
    return libssl, p


def _thread_cpu(tid):
    """CPU seconds a thread of this process has used."""
    with open("/proc/self/task/%d/stat" % tid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_keyupdate_flood_from_a_client_that_does_not_read_does_not_spin(tls_serve, kind2):
    """Each TLS 1.3 KeyUpdate(update_requested) makes the server write its
    own; with the client reading nothing the server's send buffer fills and
    its SSL_read() waits for POLLOUT. The loop then waits for that, not for
    input (which the unread records keep signalling): it once spun at 100 %
    CPU until the connection's timer fired."""
    live = tls_serve(kind2, header_timeout=30)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(IO_TIMEOUT)
    raw.connect(live.address)
    t = live.ctx(min_version=ssl.TLSVersion.TLSv1_3).wrap_socket(raw, server_hostname="localhost")
    try:
        libssl, p = _ssl_pointer(t)
        if p is None:
            pytest.skip("no SSL * found under this Python's ssl socket")
        t.setblocking(False)
        sent, t0 = 0, time.monotonic()
        while sent < 200000 and time.monotonic() - t0 < 5:
            libssl.SSL_key_update(p, 1)     # SSL_KEY_UPDATE_REQUESTED
            if libssl.SSL_do_handshake(p) != 1:
                break                       # our own send buffer is full
            sent += 1
        assert sent > 1000
        # Once through what it could read (slow under a sanitizer), the
        # loop goes idle; a spin keeps it busy for good.
        tid, seen = live.thread.native_id, []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            cpu0, w0 = _thread_cpu(tid), time.monotonic()
            time.sleep(0.5)
            seen.append((_thread_cpu(tid) - cpu0) / (time.monotonic() - w0))
            if seen[-1] < 0.3:
                break
        assert seen[-1] < 0.3, "the loop stayed busy on a stalled client: %r" % (seen,)
    finally:
        t.close()
    resp, body = live.request("GET", "/after")
    assert (resp.status, body) == (200, b"ok /after")

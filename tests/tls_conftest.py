"""Certificates and TLS client helpers for tests/test_tls.py.

Import what a module needs (`from tls_conftest import pki, tls_serve, ...`).

* `pki` (session): a CA made by trustme for the run, a server certificate
  for localhost / 127.0.0.1 / ::1, a second one for `other.test` (SNI), a
  server certificate from a second CA (reload_tls), client certificates from
  the CA and from a foreign CA, an encrypted copy of the server key, and the
  files holding them.
* `tls_serve`: a yimmo.Server or yimmo.WSGIServer on a background thread
  with `tls=` set (the pki's localhost certificate unless the test says
  otherwise), the `App` below as the application unless the test brings its
  own, and the `yimmo` logger's records; teardown stops every server,
  asserts run() returned and fails on an ERROR record unless the test set
  `live.expect_errors`.
* Clients: `client_context()` builds an ssl.SSLContext, `tls_conn()` a
  conftest.RawConn over a TLS socket (strict about close_notify: an EOF
  without it raises ssl.SSLEOFError), `HTTPS` an http.client connection
  that dials 127.0.0.1 and sends the SNI name it is given.
"""
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import warnings
import wsgiref.validate
from dataclasses import dataclass

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import yimmo
from conftest import (IO_TIMEOUT, LiveServer, LogRecords, RawConn, assert_no_logged_errors,
                      one_request, stop_servers, wait_accepting)

MiB = 1024 * 1024
KEY_PASSWORD = "correct horse"

# name -> (flavour, threads)
KINDS = {
    "native": ("native", 0),
    "native-threads": ("native", 2),
    "wsgi": ("wsgi", 0),
    "wsgi-threads": ("wsgi", 2),
}


# --- Certificates ------------------------------------------------------------


@dataclass
class Leaf:
    """One certificate: its files, DER, and subject/issuer as RFC 4514 strings."""
    pem: str        # certificate chain and key in one file
    cert: str       # certificate chain only
    key: str        # private key only
    der: bytes
    subject: str
    issuer: str
    leaf: trustme.LeafCert


@dataclass
class PKI:
    dir: str
    ca: trustme.CA
    ca_pem: str          # the CA's certificate (trust anchor for server and client certs)
    ca2: trustme.CA
    ca2_pem: str         # a second CA: the server certificate after a reload
    both_pem: str        # ca_pem + ca2_pem
    server: Leaf         # localhost, 127.0.0.1, ::1 from ca
    other: Leaf          # other.test from ca (SNI)
    wild: Leaf           # *.wild.test from ca (SNI, RFC 6125 wildcard)
    server_b: Leaf       # localhost, 127.0.0.1 from ca2
    client: Leaf         # a client certificate from ca
    foreign_client: Leaf  # a client certificate from a CA nobody trusts
    encrypted_key: str   # server's key encrypted with KEY_PASSWORD

    def tls(self, **kw):
        """The server's tls= dict: the localhost certificate plus kw."""
        cfg = {"certfile": self.server.cert, "keyfile": self.server.key}
        cfg.update(kw)
        return cfg


def _leaf(directory, name, leaf):
    pem = os.path.join(directory, name + ".pem")
    cert = os.path.join(directory, name + ".crt")
    key = os.path.join(directory, name + ".key")
    leaf.private_key_and_cert_chain_pem.write_to_path(pem)
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    c = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return Leaf(pem, cert, key, ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()),
                c.subject.rfc4514_string(), c.issuer.rfc4514_string(), leaf)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca = trustme.CA(organization_name="yimmo tests")
    ca2 = trustme.CA(organization_name="yimmo tests after reload")
    foreign = trustme.CA(organization_name="somebody else")
    ca_pem, ca2_pem, both_pem = (os.path.join(d, n) for n in ("ca.pem", "ca2.pem", "both.pem"))
    ca.cert_pem.write_to_path(ca_pem)
    ca2.cert_pem.write_to_path(ca2_pem)
    with open(both_pem, "wb") as f:
        f.write(ca.cert_pem.bytes() + ca2.cert_pem.bytes())
    server = _leaf(d, "server", ca.issue_cert("localhost", "127.0.0.1", "::1"))
    key = serialization.load_pem_private_key(server.leaf.private_key_pem.bytes(), None)
    encrypted_key = os.path.join(d, "server-encrypted.key")
    with open(encrypted_key, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(KEY_PASSWORD.encode())))
    return PKI(
        dir=d, ca=ca, ca_pem=ca_pem, ca2=ca2, ca2_pem=ca2_pem, both_pem=both_pem,
        server=server,
        other=_leaf(d, "other", ca.issue_cert("other.test")),
        wild=_leaf(d, "wild", ca.issue_cert("*.wild.test")),
        server_b=_leaf(d, "server-b", ca2.issue_cert("localhost", "127.0.0.1",
                                                     organization_name="after reload")),
        client=_leaf(d, "client", ca.issue_cert("client@example.test", common_name="client one")),
        foreign_client=_leaf(d, "foreign", foreign.issue_cert("mallory@example.test",
                                                               common_name="mallory")),
        encrypted_key=encrypted_key,
    )


# --- Clients -----------------------------------------------------------------


def client_context(cafile, cert=None, alpn=None, min_version=None, max_version=None,
                   check_hostname=True, ciphers=None):
    """A client SSLContext trusting cafile; cert is a Leaf to present."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = check_hostname
    with warnings.catch_warnings():  # TLSv1/TLSv1_1 are deprecated names.
        warnings.simplefilter("ignore", DeprecationWarning)
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_socket(addr, ctx, server_hostname="localhost", timeout=IO_TIMEOUT, rcvbuf=None,
               strict_eof=True):
    """A connected, handshaken ssl.SSLSocket (raises what the handshake raises)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(addr[:2])
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return ctx.wrap_socket(raw, server_hostname=server_hostname,
                               suppress_ragged_eofs=not strict_eof)
    except BaseException:
        raw.close()
        raise


def tls_conn(addr, ctx, server_hostname="localhost", **kw):
    """conftest.RawConn over TLS: exact bytes in, responses parsed by hand."""
    return RawConn(sock=tls_socket(addr, ctx, server_hostname, **kw))


class HTTPS(http.client.HTTPSConnection):
    """http.client over TLS to addr, sending server_hostname as SNI (None: no SNI)."""

    def __init__(self, addr, context, server_hostname="localhost", timeout=IO_TIMEOUT):
        super().__init__(addr[0], addr[1], timeout=timeout, context=context)
        self.sni = server_hostname

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.sni)


# --- Servers ------------------------------------------------------------------


def pattern(n, seed=1):
    """n deterministic pseudo-random bytes (nothing for a compressor to find)."""
    return random.Random(seed).randbytes(n)


WSGI_TLS_KEYS = ("wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI",
                 "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN", "SSL_CLIENT_I_DN", "SSL_CLIENT_CERT",
                 "REMOTE_PORT")


class App:
    """The default application, native and WSGI.

    Every call is recorded in `seen` as (path, info): for yimmo.Server info
    is a copy of exchange.tls (None on a plain connection) plus the remote
    port; for WSGI it holds the TLS keys of the environ that are present.
    Paths: /echo answers the request body; /big?n= answers n pattern bytes
    from a list body; /chunks?n= streams n small chunks without a length;
    anything else answers `ok <path>`.
    """

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def paths(self):
        with self.lock:
            return [p for p, _ in self.seen]

    def last(self):
        with self.lock:
            return self.seen[-1][1]

    def _record(self, path, info):
        with self.lock:
            self.seen.append((path, info))

    def native(self, ex):
        info = dict(ex.tls) if ex.tls is not None else None
        self._record(ex.path, {"tls": info, "port": ex.remote_addr[1]})
        q = dict(p.split("=", 1) for p in ex.query.split("&") if "=" in p)
        body = ex.body
        if ex.path == "/echo":
            ex.respond(200, [("Content-Type", "application/octet-stream")], body)
        elif ex.path == "/big":
            ex.respond(200, [("Content-Type", "application/octet-stream")], pattern(int(q["n"])))
        elif ex.path == "/chunks":
            ex.start(200, [("Content-Type", "text/plain")])
            for i in range(int(q["n"])):
                ex.write(b"%06d\n" % i)
            ex.end()
        else:
            ex.respond(200, [("Content-Type", "text/plain")], b"ok " + ex.path.encode())

    def wsgi(self, environ, start_response):
        path = environ["PATH_INFO"]
        self._record(path, {k: environ[k] for k in WSGI_TLS_KEYS if k in environ})
        q = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
        chunks = []
        while True:
            data = environ["wsgi.input"].read(1 << 16)
            if not data:
                break
            chunks.append(data)
        body = b"".join(chunks)
        if path == "/echo":
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/big":
            data = pattern(int(q["n"]))
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(len(data)))])
            return [data[i:i + MiB] for i in range(0, len(data), MiB)]
        if path == "/chunks":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (b"%06d\n" % i for i in range(int(q["n"])))
        out = b"ok " + path.encode("latin-1")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
        return [out]


class LiveTLS(LiveServer):
    """A LiveServer with TLS client shortcuts (trusting pki's CAs)."""

    def ctx(self, **kw):
        kw.setdefault("cafile", self.pki.both_pem)
        return client_context(**kw)

    def https(self, ctx=None, server_hostname="localhost", timeout=IO_TIMEOUT):
        return HTTPS(self.address, ctx or self.ctx(), server_hostname, timeout)

    def tls_conn(self, ctx=None, server_hostname="localhost", **kw):
        return tls_conn(self.address, ctx or self.ctx(), server_hostname, **kw)

    def request(self, method="GET", path="/", body=None, headers=None, ctx=None,
                server_hostname="localhost"):
        """One request on a fresh TLS connection: (response, body)."""
        return one_request(self.https(ctx, server_hostname), method, path, body, headers)


@pytest.fixture
def tls_serve(pki):
    """Factory: tls_serve(kind, app=None, tls=..., validate=True, **kw) -> LiveTLS.

    kind is a KINDS key; app is a handler / WSGI app (App() when None,
    reachable as live.app). WSGI apps are wrapped in wsgiref.validate unless
    validate=False. tls defaults to pki.tls(); pass tls=None for plain HTTP.
    """
    logger = logging.getLogger("yimmo")
    log = LogRecords()
    old_level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    started = []
    missing = object()

    def start(kind, app=None, tls=missing, validate=True, **kw):
        flavour, threads = KINDS[kind]
        default = App()
        if app is None:
            app = default.native if flavour == "native" else default.wsgi
        if flavour == "wsgi" and validate:
            app = wsgiref.validate.validator(app)
        if "sock" not in kw:
            kw.setdefault("port", 0)
        kw.setdefault("threads", threads)
        kw["tls"] = pki.tls() if tls is missing else tls
        cls = yimmo.Server if flavour == "native" else yimmo.WSGIServer
        live = LiveTLS(cls(app, **kw))
        live.kind, live.flavour, live.pki = kind, flavour, pki
        live.app, live.log, live.expect_errors = default, log, False
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

"""`yimmo-wsgi` over TLS (issue #6): the TLS options, https:// binds, errors, HUP.

The option resolution and the checks that need no certificate run
in-process through yimmo.config (as tests/test_cli.py does); the rest runs
the real CLI in a subprocess with certificates made by trustme, waits for
readiness by reading its log, and talks to it with ssl + http.client.
Every bad input must give exit status 2 and one line on stderr naming the
file or setting, before any worker starts.
"""
import http.client
import json
import os
import re
import signal
import socket
import ssl
import threading

import pytest

import yimmo
from yimmo import config
from apps.harness import (LISTEN_RE, READY_RE, assert_one_line_error, in_background,  # noqa: F401
                           pid_gone, run_cli, server, wait_until)

trustme = pytest.importorskip("trustme")

HAVE_TLS = hasattr(yimmo, "check_tls")
needs_tls = pytest.mark.skipif(not HAVE_TLS, reason="this yimmo build has no TLS (yimmo.check_tls)")

TLS_NAMES = ["certfile", "keyfile", "keyfile_password", "ca_certs", "cert_reqs", "ciphers",
             "tls_min_version", "sni_cert"]

# A WSGI app that shows what a test needs of the environ (written to the test's cwd).
ENV_APP = '''
import json, os

KEYS = ("wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI",
        "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN", "SSL_CLIENT_I_DN")

def application(environ, start_response):
    body = json.dumps({k: environ.get(k) for k in KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body))), ("X-Pid", str(os.getpid()))])
    return [body]
'''



# --- Certificates -------------------------------------------------------------------------


class Certs:
    """A CA, a server certificate for localhost/127.0.0.1/::1 and its files under a directory."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.ca = trustme.CA()
        self.ca_pem = str(tmp_path / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_pem)
        self.cert, self.key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
        self.leaf = self.write(self.cert, self.key)

    def issue(self, *names):
        return self.ca.issue_cert(*(names or ("localhost", "127.0.0.1", "::1")))

    def write(self, cert_path, key_path, leaf=None):
        """Write a (new) leaf's chain and key; the leaf."""
        leaf = leaf or self.issue()
        with open(cert_path, "wb") as f:
            f.write(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(key_path)
        return leaf

    @staticmethod
    def der(leaf):
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())

    def client_context(self, client=None):
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        if client is not None:
            client.configure_cert(ctx)
        return ctx


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


def _encrypted_key(leaf, password):
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(password.encode()))


# --- Talking to the server ----------------------------------------------------------------


def listening(y):
    """[(scheme, host, port or path)] from the "Listening at:" line."""
    out = []
    for url in y.wait_log(LISTEN_RE)[0].group(1).split(","):
        scheme, _, rest = url.partition("://")
        if not _:
            scheme, _, rest = url.partition(":")
            out.append((scheme, None, rest))
            continue
        host, _, port = rest.rpartition(":")
        out.append((scheme, host.strip("[]"), int(port)))
    return out


def https_conn(host, port, ctx, timeout=10):
    return http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)


def request(conn, path="/"):
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def https_get(host, port, ctx, path="/"):
    conn = https_conn(host, port, ctx)
    try:
        status, headers, body = request(conn, path)
        return status, headers, body, conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()


def http_get(host, port, path="/"):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        return request(conn, path)
    finally:
        conn.close()


def peer_cert(host, port, ctx):
    """The DER certificate a new TLS connection gets (handshake only)."""
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            return s.getpeercert(binary_form=True)


# --- Options: resolution and checks (no C needed) -----------------------------------------


@pytest.mark.parametrize("spec,host,port,scheme", [
    ("https://127.0.0.1:8443", "127.0.0.1", 8443, "https"),
    ("https://[::1]:8443", "::1", 8443, "https"),
    ("HTTPS://example.test:443/", "example.test", 443, "https"),
    ("http://0.0.0.0:8080", "0.0.0.0", 8080, "http"),
    ("http://[::]:80", "::", 80, "http"),
    ("127.0.0.1:8000", "127.0.0.1", 8000, None),
    ("[::1]:9000", "::1", 9000, None),
])
def test_parse_bind_schemes(spec, host, port, scheme):
    b = config.parse_bind(spec)
    assert (b.kind, b.host, b.port, b.scheme) == ("tcp", host, port, scheme)


@pytest.mark.parametrize("spec,fragment", [
    ("https://example.test", "give the port (https://HOST:PORT)"),
    ("https://[::1]", "give the port"),
    ("http://:", "bad port ''"),
    ("https://127.0.0.1:http", "bad port 'http'"),
    ("https://unix:/run/y.sock", "https:// takes HOST:PORT"),
    ("http://fd://3", "http:// takes HOST:PORT"),
    ("ftp://127.0.0.1:21", "unknown scheme"),
    ("https://[::1:8443", "missing ']'"),
])
def test_parse_bind_bad_schemes(spec, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        config.parse_bind(spec)


def test_binds_follow_certfile_unless_a_scheme_says_otherwise():
    binds = ["127.0.0.1:1", "https://127.0.0.1:2", "http://127.0.0.1:3", "unix:/tmp/y.sock", "fd://3"]
    plain = config.load([], environ={"YIMMO_BIND": " ".join(binds)})
    assert [b.tls for b in plain.binds] == [False, True, False, False, False]
    tls = config.load(["--certfile", "c.pem"], environ={"YIMMO_BIND": " ".join(binds)})
    assert [b.tls for b in tls.binds] == [True, True, False, True, True]


def test_tls_config_builds_the_servers_dict(tmp_path):
    s = config.load(["--certfile", "c.pem", "--keyfile", "k.pem", "--ca-certs", "ca.pem",
                     "--cert-reqs", "2", "--ciphers", "ECDHE+AESGCM", "--tls-min-version", "TLSv1.3",
                     "--sni-cert", "a.pem,a.key", "--sni-cert", "b.pem"],
                    environ={"YIMMO_KEYFILE_PASSWORD": "pw"})
    assert config.tls_config(s) == {
        "certfile": "c.pem", "keyfile": "k.pem", "password": "pw", "ca_certs": "ca.pem",
        "cert_reqs": "required", "ciphers": "ECDHE+AESGCM", "min_version": "1.3",
        "sni": [{"certfile": "a.pem", "keyfile": "a.key", "password": "pw"},
                {"certfile": "b.pem", "password": "pw"}]}
    assert config.tls_config(config.load(["--certfile", "c.pem"], environ={})) == {
        "certfile": "c.pem", "cert_reqs": "none", "min_version": "1.2"}
    assert config.tls_config(config.load([], environ={})) is None


@pytest.mark.parametrize("raw,value", [("none", "none"), ("Optional", "optional"), ("required", "required"),
                                       ("0", "none"), ("1", "optional"), ("2", "required")])
def test_cert_reqs_words_and_gunicorn_numbers(raw, value, tmp_path):
    assert config.load(["--cert-reqs", raw], environ={}).cert_reqs == value
    path = tmp_path / "y.toml"
    path.write_text("cert_reqs = %s\n" % (raw if raw.isdigit() else '"%s"' % raw))
    assert config.load(["-c", str(path)], environ={}).cert_reqs == value


def test_tls_min_version_from_a_toml_number(tmp_path):
    path = tmp_path / "y.toml"
    path.write_text("tls_min_version = 1.3\n")
    assert config.load(["-c", str(path)], environ={}).tls_min_version == "1.3"


# name -> (command-line value, TOML value, environment value, resolved value)
SAMPLES = {
    "certfile": ("/c.pem", "/c.pem", "/c.pem", "/c.pem"),
    "keyfile": ("/k.pem", "/k.pem", "/k.pem", "/k.pem"),
    "keyfile_password": (None, "s3cret", "s3cret", "s3cret"),
    "ca_certs": ("/ca.pem", "/ca.pem", "/ca.pem", "/ca.pem"),
    "cert_reqs": ("optional", 1, "1", "optional"),
    "ciphers": ("ECDHE+AESGCM", "ECDHE+AESGCM", "ECDHE+AESGCM", "ECDHE+AESGCM"),
    "tls_min_version": ("1.3", "1.3", "1.3", "1.3"),
    "sni_cert": ("/a.pem,/a.key", ["/a.pem,/a.key"], "/a.pem,/a.key", ["/a.pem,/a.key"]),
}


def test_samples_cover_every_tls_option():
    assert set(SAMPLES) == {o.name for o in config.OPTIONS if o.section == "tls"} == set(TLS_NAMES)


@pytest.mark.parametrize("name", TLS_NAMES)
def test_each_tls_option_from_each_source_and_precedence(name, tmp_path):
    o = config.BY_NAME[name]
    cli_v, file_v, env_v, want = SAMPLES[name]
    path = tmp_path / "y.toml"
    path.write_text("%s = %s\n" % (name, config._toml_value(file_v)))
    s = config.load(["-c", str(path)], environ={})
    assert (getattr(s, name), s.source(name)) == (want, "config file")
    s = config.load([], environ={o.env: env_v})
    assert (getattr(s, name), s.source(name)) == (want, "environment")
    s = config.load(["-c", str(path)], environ={o.env: env_v})
    assert s.source(name) == "environment"
    if o.flags:
        s = config.load([o.flags[-1], cli_v, "-c", str(path)], environ={o.env: env_v})
        assert (getattr(s, name), s.source(name)) == (want, "command line")
    assert config.load([], environ={}).source(name) == "default"


def test_keyfile_password_has_no_flag():
    o = config.BY_NAME["keyfile_password"]
    assert o.flags == () and o.no_flag and o.secret
    with pytest.raises(config.ConfigError, match="unrecognized arguments: --keyfile-password"):
        config.load(["--keyfile-password", "pw"], environ={})
    r = run_cli("--help")
    assert r.returncode == 0
    assert "YIMMO_KEYFILE_PASSWORD" in r.stdout and "--keyfile-password" not in r.stdout
    for name in TLS_NAMES:
        for flag in config.BY_NAME[name].flags:
            assert flag in r.stdout, flag


def test_sni_cert_from_the_environment_is_split_on_spaces():
    s = config.load([], environ={"YIMMO_SNI_CERT": "/a.pem,/a.key  /b.pem"})
    assert s.sni_cert == ["/a.pem,/a.key", "/b.pem"]


# Bad values and combinations: (argv, environment, fragment). Checked in-process
# (load + tls_config), and a sample through the real CLI below.
BAD = [
    (["--keyfile", "k.pem"], {}, "--keyfile needs --certfile"),
    ([], {"YIMMO_KEYFILE": "k.pem"}, "YIMMO_KEYFILE needs --certfile"),
    ([], {"YIMMO_KEYFILE_PASSWORD": "pw"}, "YIMMO_KEYFILE_PASSWORD needs --certfile"),
    (["--ca-certs", "ca.pem"], {}, "--ca-certs needs --certfile"),
    (["--sni-cert", "a.pem"], {}, "--sni-cert needs --certfile"),
    (["--tls-min-version", "1.3"], {}, "--tls-min-version needs --certfile"),
    (["-b", "https://127.0.0.1:8443"], {}, "https:// bind needs --certfile"),
    ([], {"YIMMO_BIND": "http://127.0.0.1:1 https://127.0.0.1:2"}, "https:// bind needs --certfile"),
    (["--certfile", "c.pem", "--cert-reqs", "required"], {}, "--cert-reqs required needs --ca-certs"),
    (["--certfile", "c.pem"], {"YIMMO_CERT_REQS": "1"}, "YIMMO_CERT_REQS optional needs --ca-certs"),
    (["--certfile", "c.pem", "--cert-reqs", "sometimes"], {},
     "--cert-reqs: must be none, optional or required (or 0, 1, 2), got 'sometimes'"),
    (["--certfile", "c.pem", "--cert-reqs", "3"], {}, "--cert-reqs: must be none"),
    (["--certfile", "c.pem", "--tls-min-version", "1.1"], {},
     "--tls-min-version: must be 1.2 or 1.3 (TLS 1.0 and 1.1 are never accepted), got '1.1'"),
    (["--certfile", "c.pem"], {"YIMMO_TLS_MIN_VERSION": "1.0"}, "YIMMO_TLS_MIN_VERSION: must be 1.2 or 1.3"),
    (["--certfile", ""], {}, "--certfile: must not be empty"),
    (["--certfile", "c.pem", "--ciphers", " "], {}, "--ciphers: must not be empty"),
    (["--certfile", "c.pem", "--sni-cert", "a.pem,"], {}, "--sni-cert: 'a.pem,': expected CERT or CERT,KEY"),
    (["--certfile", "c.pem", "--sni-cert", ",a.key"], {}, "expected CERT or CERT,KEY"),
    (["--certfile", "c.pem", "--sni-cert", "a,b,c"], {}, "expected CERT or CERT,KEY"),
]


@pytest.mark.parametrize("argv,env,fragment", BAD, ids=[f for _, _, f in BAD])
def test_bad_tls_settings_are_one_line_config_errors(argv, env, fragment):
    with pytest.raises(config.ConfigError) as e:
        config.tls_config(config.load(argv + ["hello"], environ=env))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_tls_key_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "y.toml"
    path.write_text('keyfile = "k.pem"\n')
    with pytest.raises(config.ConfigError) as e:
        config.tls_config(config.load(["-c", str(path)], environ={}))
    assert str(e.value) == "keyfile (config file %s) needs --certfile" % path
    path.write_text('certfile = "c.pem"\ncert_reqs = "maybe"\n')
    with pytest.raises(config.ConfigError, match="config file .*: cert_reqs: must be none"):
        config.load(["-c", str(path)], environ={})


@pytest.mark.parametrize("argv,env,fragment", [BAD[0], BAD[2], BAD[6], BAD[8], BAD[10], BAD[12]],
                         ids=["keyfile", "password", "https-bind", "cert-reqs-ca", "cert-reqs", "min-version"])
def test_bad_tls_settings_through_the_real_cli(argv, env, fragment):
    assert_one_line_error(run_cli(*argv, "hello:application", env=env), fragment)
    assert_one_line_error(run_cli("--check-config", *argv, "hello:application", env=env), fragment)


def test_print_config_shows_tls_options_but_never_the_password(tmp_path):
    r = run_cli("--print-config", "--certfile", "/c.pem", "--keyfile", "/k.pem", "--cert-reqs", "1",
                "--ca-certs", "/ca.pem", "--sni-cert", "/a.pem,/a.key", "-b", "https://[::1]:8443",
                "hello:app", env={"YIMMO_KEYFILE_PASSWORD": "s3cret-pw"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "s3cret-pw" not in out and "s3cret-pw" not in r.stderr
    assert '# keyfile_password = "***"  # environment (hidden)' in out
    for line in ['certfile = "/c.pem"  # command line', 'keyfile = "/k.pem"  # command line',
                 'cert_reqs = "optional"  # command line', 'ca_certs = "/ca.pem"  # command line',
                 'sni_cert = ["/a.pem,/a.key"]  # command line', 'tls_min_version = "1.2"  # default',
                 "# ciphers = (unset)", 'bind = ["https://[::1]:8443"]  # command line']:
        assert line in out, line
    # It reads back as a config file, and the hidden password stays unset.
    path = tmp_path / "y.toml"
    path.write_text(out)
    again = config.load(["-c", str(path)], environ={})
    assert again.keyfile_password is None and again.cert_reqs == "optional"
    assert again.sni_cert == ["/a.pem,/a.key"] and again.bind == ["https://[::1]:8443"]
    unset = run_cli("--print-config", "hello:app")
    assert "# keyfile_password = (unset)" in unset.stdout


def test_options_table_has_the_tls_rows():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "wsgi.md")) as f:
        doc = f.read()
    assert config.options_table() in doc
    assert "| `keyfile_password` | none (environment or file only) | `YIMMO_KEYFILE_PASSWORD` |" in doc
    assert "\n## HTTPS\n" in doc


# --- Serving over TLS ------------------------------------------------------------------------


@needs_tls
def test_https_get(server, certs):
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "hello:application")
    [(scheme, host, port)] = listening(y)
    assert scheme == "https"
    assert "Listening at: https://127.0.0.1:%d (%d)" % (port, y.proc.pid) in y.stderr
    status, headers, body, der = https_get(host, port, certs.client_context())
    assert status == 200 and body.startswith(b"hello from ")
    assert int(headers["X-Pid"]) in y.ready_pids()
    assert der == certs.der(certs.leaf)


@needs_tls
def test_check_config_loads_the_certificates(certs):
    r = run_cli("--check-config", "--certfile", certs.cert, "--keyfile", certs.key, "hello:application")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@needs_tls
def test_plain_and_tls_binds_in_one_process(server, certs, tmp_path):
    (tmp_path / "envapp.py").write_text(ENV_APP)
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "-b", "http://127.0.0.1:0",
               "envapp:application", bind="https://127.0.0.1:0", cwd=tmp_path)
    (s1, h1, p1), (s2, h2, p2) = listening(y)
    assert (s1, s2) == ("https", "http")
    assert re.search(r"Listening at: https://127\.0\.0\.1:%d,http://127\.0\.0\.1:%d \(%d\)"
                     % (p1, p2, y.proc.pid), y.stderr)
    status, headers, body, _ = https_get(h1, p1, certs.client_context())
    env = json.loads(body)
    assert status == 200 and env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    assert env["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3") and env["SSL_CIPHER"]
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and env["SSL_CLIENT_S_DN"] is None
    tls_pid = int(headers["X-Pid"])
    status, headers, body = http_get(h2, p2)
    env = json.loads(body)
    assert status == 200 and env["wsgi.url_scheme"] == "http" and env["HTTPS"] is None
    assert env["SSL_PROTOCOL"] is None
    assert int(headers["X-Pid"]) == tls_pid  # One worker serves both listeners.
    # Plain HTTP sent to the TLS port: a clear-text 400.
    with socket.create_connection((h1, p1), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")


@needs_tls
def test_host_port_is_tls_with_certfile_and_http_scheme_stays_plain(server, certs):
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "-b", "http://127.0.0.1:0",
               "hello:application")
    (s1, h1, p1), (s2, h2, p2) = listening(y)
    assert (s1, s2) == ("https", "http")
    assert https_get(h1, p1, certs.client_context())[0] == 200
    assert http_get(h2, p2)[0] == 200


@needs_tls
def test_https_ipv6_bind(server, certs):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "hello:application",
               bind="https://[::1]:0")
    [(scheme, host, port)] = listening(y)
    assert (scheme, host) == ("https", "::1")
    assert "Listening at: https://[::1]:%d " % port in y.stderr
    assert https_get(host, port, certs.client_context())[0] == 200


@needs_tls
def test_unix_bind_follows_certfile(server, certs, tmp_path):
    path = str(tmp_path / "y.sock")
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "hello:application", bind="unix:" + path)
    assert listening(y) == [("https+unix", None, path)]
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(path)
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"hello from" in data


@needs_tls
def test_settings_from_environment_and_config_file(server, certs, tmp_path):
    # An encrypted key: its passphrase only ever in the environment or the file.
    enc = tmp_path / "enc.key"
    enc.write_bytes(_encrypted_key(certs.leaf, "open sesame"))
    env = {"YIMMO_CERTFILE": certs.cert, "YIMMO_KEYFILE": str(enc),
           "YIMMO_KEYFILE_PASSWORD": "open sesame", "YIMMO_TLS_MIN_VERSION": "1.3"}
    y = server("hello:application", env=env)
    [(scheme, host, port)] = listening(y)
    assert scheme == "https"
    ctx = certs.client_context()
    status, _, _, der = https_get(host, port, ctx)
    assert status == 200 and der == certs.der(certs.leaf)
    ctx12 = certs.client_context()
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):  # --tls-min-version 1.3 reached the server.
        peer_cert(host, port, ctx12)
    assert "open sesame" not in y.stderr
    y.close()

    conf = tmp_path / "yimmo.toml"
    conf.write_text('certfile = "%s"\nkeyfile = "%s"\nkeyfile_password = "open sesame"\n'
                    'bind = ["https://127.0.0.1:0", "http://127.0.0.1:0"]\n' % (certs.cert, enc))
    y = server("-c", str(conf), "hello:application", bind=None)
    (s1, h1, p1), (s2, h2, p2) = listening(y)
    assert (s1, s2) == ("https", "http")
    assert https_get(h1, p1, ctx)[0] == 200 and http_get(h2, p2)[0] == 200


@needs_tls
def test_client_certificates(server, certs, tmp_path):
    (tmp_path / "envapp.py").write_text(ENV_APP)
    client_ca = trustme.CA()
    client_ca_pem = str(tmp_path / "client-ca.pem")
    client_ca.cert_pem.write_to_path(client_ca_pem)
    alice = client_ca.issue_cert("alice@example.test", common_name="alice")
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "--ca-certs", client_ca_pem,
               "--cert-reqs", "2", "envapp:application", cwd=tmp_path)
    [(_, host, port)] = listening(y)
    status, _, body, _ = https_get(host, port, certs.client_context(alice))
    env = json.loads(body)
    assert status == 200 and env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert "CN=alice" in env["SSL_CLIENT_S_DN"] and env["SSL_CLIENT_I_DN"]
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        https_get(host, port, certs.client_context())  # No certificate: refused.
    y.close()

    y = server("--certfile", certs.cert, "--keyfile", certs.key, "--ca-certs", client_ca_pem,
               "--cert-reqs", "optional", "envapp:application", cwd=tmp_path)
    [(_, host, port)] = listening(y)
    env = json.loads(https_get(host, port, certs.client_context())[2])
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and env["SSL_CLIENT_S_DN"] is None
    env = json.loads(https_get(host, port, certs.client_context(alice))[2])
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"


@needs_tls
def test_sni_cert_is_chosen_by_server_name(server, certs, tmp_path):
    other = certs.issue("other.test")
    cert2, key2 = str(tmp_path / "other.pem"), str(tmp_path / "other.key")
    certs.write(cert2, key2, other)
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "--sni-cert", "%s,%s" % (cert2, key2),
               "hello:application")
    [(_, host, port)] = listening(y)
    ctx = certs.client_context()
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="other.test") as s:
            assert s.getpeercert(binary_form=True) == certs.der(other)
    assert peer_cert(host, port, ctx) == certs.der(certs.leaf)


# --- Bad certificates: one line, exit 2, before any worker ---------------------------------


def _no_worker_started(r):
    assert "Booting worker" not in r.stderr and "Listening at" not in r.stderr


@needs_tls
def test_missing_certificate_file(certs, tmp_path):
    missing = str(tmp_path / "nope.pem")
    r = run_cli("--certfile", missing, "hello:application")
    assert_one_line_error(r, missing, "No such file or directory")
    _no_worker_started(r)
    assert_one_line_error(run_cli("--check-config", "--certfile", missing, "hello:application"), missing)
    assert_one_line_error(run_cli("--certfile", certs.cert, "--keyfile", missing, "hello:application"),
                          "keyfile", missing)


@needs_tls
def test_key_that_does_not_match_the_certificate(certs, tmp_path):
    stranger = str(tmp_path / "stranger.key")
    certs.issue("stranger.test").private_key_pem.write_to_path(stranger)
    r = run_cli("--certfile", certs.cert, "--keyfile", stranger, "-b", "127.0.0.1:0", "hello:application")
    assert_one_line_error(r, "keyfile", stranger)
    _no_worker_started(r)


@needs_tls
def test_certfile_without_a_key(certs):
    # The key defaults to the certificate file, which has none.
    assert_one_line_error(run_cli("--certfile", certs.cert, "hello:application"), certs.cert)


@needs_tls
def test_bad_cipher_list(certs):
    r = run_cli("--certfile", certs.cert, "--keyfile", certs.key, "--ciphers", "NO-SUCH-CIPHER",
                "hello:application")
    assert_one_line_error(r, "ciphers", "NO-SUCH-CIPHER")
    _no_worker_started(r)


@needs_tls
def test_wrong_keyfile_password(certs, tmp_path):
    enc = tmp_path / "enc.key"
    enc.write_bytes(_encrypted_key(certs.leaf, "right"))
    r = run_cli("--certfile", certs.cert, "--keyfile", str(enc), "hello:application",
                env={"YIMMO_KEYFILE_PASSWORD": "not-the-pass-phrase"})
    line = assert_one_line_error(r, str(enc))
    assert "not-the-pass-phrase" not in line
    r = run_cli("--certfile", certs.cert, "--keyfile", str(enc), "hello:application")  # No password.
    assert_one_line_error(r, str(enc))


@needs_tls
def test_missing_ca_certs_and_sni_cert(certs, tmp_path):
    missing = str(tmp_path / "nope.pem")
    base = ["--certfile", certs.cert, "--keyfile", certs.key]
    assert_one_line_error(run_cli(*base, "--ca-certs", missing, "--cert-reqs", "required", "hello"),
                          "ca_certs", missing)
    assert_one_line_error(run_cli(*base, "--sni-cert", missing, "hello"), missing)


@needs_tls
def test_https_bind_without_certfile_and_bad_cert_reqs_exit_2():
    r = run_cli("-b", "https://127.0.0.1:0", "hello:application")
    assert_one_line_error(r, "https:// bind needs --certfile", "https://127.0.0.1:0")
    assert_one_line_error(run_cli("--certfile", "c.pem", "--cert-reqs", "maybe", "hello"), "--cert-reqs")


# --- SIGHUP: renewed certificates -------------------------------------------------------------



@needs_tls
def test_hup_serves_renewed_certificates_and_open_connections_finish(server, certs, tmp_path):
    mark = str(tmp_path / "mark")
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "--graceful-timeout", "20",
               "hello:application", env={"YIMMO_TEST_MARK": mark})
    [(_, host, port)] = listening(y)
    ctx = certs.client_context()
    old_pid = y.ready_pids()[0]
    old_der = certs.der(certs.leaf)

    # A keep-alive connection: one request done, the second in flight across the HUP.
    conn = https_conn(host, port, ctx)
    assert request(conn)[0] == 200
    assert conn.sock.getpeercert(binary_form=True) == old_der

    renewed = certs.write(certs.cert, certs.key)  # New files on disk, same paths.
    new_der = certs.der(renewed)
    assert new_der != old_der
    assert peer_cert(host, port, ctx) == old_der  # Loaded at start, not per connection.

    slow = in_background(request, conn, "/sleep/1.5")
    wait_until(lambda: os.path.exists(mark) and "start" in open(mark).read(), what="the slow request")
    y.signal(signal.SIGHUP)
    y.wait_log(READY_RE, count=2)
    slow["thread"].join(15)
    assert "error" not in slow, slow.get("error")
    status, headers, body = slow["result"]
    assert status == 200 and int(headers["X-Pid"]) == old_pid
    conn.close()

    wait_until(lambda: pid_gone(old_pid), what="the old worker to stop")
    status, headers, _, der = https_get(host, port, ctx)
    assert status == 200 and int(headers["X-Pid"]) != old_pid
    assert der == new_der


@needs_tls
def test_hup_with_a_broken_certificate_keeps_the_old_one(server, certs, tmp_path):
    y = server("--certfile", certs.cert, "--keyfile", certs.key, "hello:application")
    [(_, host, port)] = listening(y)
    ctx = certs.client_context()
    old = y.ready_pids()
    old_der = certs.der(certs.leaf)

    # A renewed certificate whose key was not copied: the pair does not match.
    certs.write(certs.cert, str(tmp_path / "elsewhere.key"))
    y.signal(signal.SIGHUP)
    y.wait_log(r"\[ERROR\] Reload: bad configuration, keeping the old one: .*%s"
               % re.escape(os.path.basename(certs.key)))
    assert y.live_workers() == old and y.proc.poll() is None
    assert peer_cert(host, port, ctx) == old_der
    assert https_get(host, port, ctx)[0] == 200

    # Garbage in the certificate file: the same.
    with open(certs.cert, "w") as f:
        f.write("not a certificate\n")
    y.signal(signal.SIGHUP)
    y.wait_log(r"Reload: bad configuration, keeping the old one: .*%s" % re.escape(certs.cert))
    assert y.live_workers() == old and peer_cert(host, port, ctx) == old_der

    # Fixed: the next HUP goes through.
    fixed = certs.write(certs.cert, certs.key)
    y.signal(signal.SIGHUP)
    y.wait_log(READY_RE, count=2)
    wait_until(lambda: all(pid_gone(p) for p in old), what="the old worker to stop")
    assert peer_cert(host, port, ctx) == certs.der(fixed)


@needs_tls
def test_hup_cannot_turn_tls_on_or_off(server, certs, tmp_path):
    conf = tmp_path / "yimmo.toml"
    conf.write_text("workers = 1\n")
    y = server("-c", str(conf), "hello:application")
    old = y.ready_pids()
    conf.write_text('certfile = "%s"\nkeyfile = "%s"\n' % (certs.cert, certs.key))
    y.signal(signal.SIGHUP)
    y.wait_log(r"\[ERROR\] Reload: --certfile was added, .*restart")
    assert y.get("/")[0] == 200 and y.live_workers() == old

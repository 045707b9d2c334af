"""Flask and Django served by yimmo.WSGIServer over real sockets.

The same scenarios run against tests/apps/flask_app.py and the single-file
Django project tests/apps/django_app.py: routing, JSON, form POST, multipart
upload, streaming responses, send_file / FileResponse through
wsgi.file_wrapper, several Set-Cookie headers, 404s and view errors. The
frameworks run under wsgiref.validate.validator, with its warnings as errors
(STRICT_WARNINGS), on the loop thread and on worker threads.
"""
import hashlib
import http.client
import json
import os
import uuid

import pytest

import yimmo.wsgi
from apps import django_app, flask_app  # Flask and Django are test dependencies
from conftest import IO_TIMEOUT, RawConn, one_request, wait_for
from wsgi_conftest import STRICT_WARNINGS, wsgi_server  # noqa: F401  (fixture)

pytestmark = STRICT_WARNINGS

KiB = 1024


class Site:
    """One framework's app and how its URLs are spelled."""

    def __init__(self, name, app, slash):
        self.name, self.app, self.slash = name, app, slash

    def url(self, path, query=""):
        """Django routes end in '/', Flask's do not."""
        if self.slash and path != "/" and not path.endswith("/"):
            path += "/"
        return path + ("?" + query if query else "")


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    path = tmp_path_factory.mktemp("dl") / "blob.bin"
    path.write_bytes(os.urandom(700 * KiB + 123))
    return path


@pytest.fixture(params=["flask", "django"])
def site(request, download):
    if request.param == "flask":
        return Site("flask", flask_app.create_app(str(download)).wsgi_app, slash=False)
    django_app.DOWNLOAD["path"] = str(download)
    return Site("django", django_app.application, slash=True)


def recording(app, seen):
    """Middleware that keeps the iterable each request returned."""
    def wrapper(environ, start_response):
        result = app(environ, start_response)
        seen.append(result)
        return result
    return wrapper


def fetch(live, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(live.host, live.port, timeout=IO_TIMEOUT)
    return one_request(conn, method, path, body, headers)


def multipart(fields, files):
    """A multipart/form-data body: (body, content_type)."""
    boundary = "yimmo-" + uuid.uuid4().hex
    out = []
    for name, value in fields:
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n" % (boundary, name)).encode()
                   + value.encode() + b"\r\n")
    for name, filename, ctype, data in files:
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                    "Content-Type: %s\r\n\r\n" % (boundary, name, filename, ctype)).encode()
                   + data + b"\r\n")
    out.append(("--%s--\r\n" % boundary).encode())
    return b"".join(out), "multipart/form-data; boundary=" + boundary


# --- Routing, 404s, errors ----------------------------------------------------------


def test_routing(wsgi_server, site):
    live = wsgi_server(site.app)
    resp, body = fetch(live, "GET", "/")
    assert (resp.status, body) == (200, b"hello from %s" % site.name.encode())
    assert resp.getheader("Content-Type").startswith("text/")
    resp, body = fetch(live, "GET", site.url("/user/bob"))
    assert (resp.status, body) == (200, b"user bob")
    # PATH_INFO carries UTF-8 as latin-1; the framework decodes it back.
    resp, body = fetch(live, "GET", site.url("/user/caf%C3%A9"))
    assert (resp.status, body.decode("utf-8")) == (200, "user café")


def test_unknown_route_is_404(wsgi_server, site):
    live = wsgi_server(site.app)
    for path in ("/nope", "/user", "/items/notanumber/"):
        resp, body = fetch(live, "GET", path)
        assert resp.status == 404, path
    resp, body = fetch(live, "GET", "/")  # and the next request is fine
    assert resp.status == 200


def test_wrong_method_is_405(wsgi_server, site):
    live = wsgi_server(site.app)
    resp, _ = fetch(live, "GET", site.url("/json"))
    assert resp.status == 405
    assert "POST" in resp.getheader("Allow")


def test_view_exception_is_the_framework_500_and_serving_goes_on(wsgi_server, site):
    live = wsgi_server(site.app)
    resp, body = fetch(live, "GET", site.url("/boom"))
    assert resp.status == 500
    assert b"failed" not in body  # DEBUG is off: no traceback to the client
    resp, body = fetch(live, "GET", "/")
    assert resp.status == 200


def test_keep_alive_across_routes(wsgi_server, site):
    live = wsgi_server(site.app)
    conn = http.client.HTTPConnection(live.host, live.port, timeout=IO_TIMEOUT)
    try:
        for i in range(20):
            conn.request("GET", site.url("/items/%d" % i, "q=k%d" % i))
            resp = conn.getresponse()
            assert json.loads(resp.read()) == {"id": i, "double": 2 * i, "q": "k%d" % i}
            conn.request("GET", site.url("/nope%d" % i))
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 404
    finally:
        conn.close()


# --- JSON and forms ------------------------------------------------------------------


def test_json_get(wsgi_server, site):
    live = wsgi_server(site.app)
    resp, body = fetch(live, "GET", site.url("/items/42", "q=caf%C3%A9"))
    assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"id": 42, "double": 84, "q": "café"}


@pytest.mark.parametrize("size", [10, 300 * KiB])  # the large one streams past the body buffer
def test_json_post(wsgi_server, site, size):
    live = wsgi_server(site.app)
    doc = {"name": "yimmo", "unicode": "é€😀", "blob": "x" * size, "n": [1, 2, 3]}
    resp, body = fetch(live, "POST", site.url("/json"), json.dumps(doc).encode(),
                       {"Content-Type": "application/json"})
    assert resp.status == 201
    assert json.loads(body) == {"received": doc, "keys": sorted(doc)}


def test_form_post(wsgi_server, site):
    live = wsgi_server(site.app)
    body = b"a=1&a=2&name=caf%C3%A9&empty=&sp=a+b%26c"
    resp, data = fetch(live, "POST", site.url("/form"), body,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    assert json.loads(data) == {
        "fields": {"a": ["1", "2"], "name": ["café"], "empty": [""], "sp": ["a b&c"]},
        "content_type": "application/x-www-form-urlencoded",
    }


# --- Uploads -----------------------------------------------------------------------


def test_multipart_file_upload(wsgi_server, site):
    live = wsgi_server(site.app)
    small = b"hello, world\r\n--not-a-boundary\r\n" * 3
    big = os.urandom(600 * KiB)
    body, ctype = multipart([("title", "café")],
                            [("doc", "notes.txt", "text/plain", small),
                             ("blob", "data.bin", "application/octet-stream", big)])
    resp, data = fetch(live, "POST", site.url("/upload"), body, {"Content-Type": ctype})
    assert resp.status == 200, data[:300]
    got = json.loads(data)
    assert got["fields"] == {"title": "café"}
    for field, name, ctype_, blob in (("doc", "notes.txt", "text/plain", small),
                                      ("blob", "data.bin", "application/octet-stream", big)):
        f = got["files"][field]
        assert (f["filename"], f["size"], f["sha256"], f["content_type"]) == \
            (name, len(blob), hashlib.sha256(blob).hexdigest(), ctype_)
    if site.name == "django":  # past FILE_UPLOAD_MAX_MEMORY_SIZE: spooled to disk
        assert got["files"]["blob"]["on_disk"]


def test_multipart_upload_with_expect_100_continue(wsgi_server, site):
    """What curl does for large uploads: wait for 100 Continue, then send."""
    live = wsgi_server(site.app)
    blob = os.urandom(200 * KiB)
    body, ctype = multipart([], [("blob", "b.bin", "application/octet-stream", blob)])
    with RawConn(live.address) as c:
        c.send(("POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                "Expect: 100-continue\r\n\r\n" % (site.url("/upload"), ctype, len(body))).encode())
        interim = c.read_head()
        assert interim.status == 100
        c.send(body)
        resp = c.read_response()
    assert resp.status == 200
    f = json.loads(resp.body)["files"]["blob"]
    assert (f["size"], f["sha256"]) == (len(blob), hashlib.sha256(blob).hexdigest())


def test_flask_reads_a_chunked_upload(wsgi_server):
    # Werkzeug reads a body without Content-Length only when the server sets
    # wsgi.input_terminated.
    live = wsgi_server(flask_app.create_app().wsgi_app)
    blob = os.urandom(333 * KiB)
    conn = http.client.HTTPConnection(live.host, live.port, timeout=IO_TIMEOUT)
    try:
        conn.request("POST", "/raw", body=(blob[i:i + 10000] for i in range(0, len(blob), 10000)),
                     headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        resp = conn.getresponse()
        data = json.loads(resp.read())
    finally:
        conn.close()
    assert data == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


# --- Responses ---------------------------------------------------------------------


def test_streaming_response_is_chunked(wsgi_server, site):
    live = wsgi_server(site.app)
    with RawConn(live.address) as c:
        c.send(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % site.url("/stream", "n=500")).encode())
        resp = c.read_response()
    assert resp.status == 200 and resp.chunked and resp.header("content-length") is None
    lines = resp.body.decode().splitlines()
    assert len(lines) == 500
    assert all(line.startswith("line %d" % i) for i, line in enumerate(lines))


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "bare"])
def test_send_file_goes_through_file_wrapper(wsgi_server, site, download, validate):
    seen = []
    live = wsgi_server(recording(site.app, seen), validate=validate)
    data = download.read_bytes()
    with RawConn(live.address) as c:
        path = site.url("/file")
        c.send(("GET %s HTTP/1.1\r\nHost: t\r\n\r\nGET %s HTTP/1.1\r\nHost: t\r\n\r\n"
                % (path, path)).encode())
        for _ in range(2):  # the connection stays usable after a file
            resp = c.read_response()
            assert resp.status == 200
            assert resp.header("content-length") == str(len(data))
            assert "attachment" in resp.header("content-disposition")
            assert hashlib.sha256(resp.body).digest() == hashlib.sha256(data).digest()
    assert len(seen) == 2
    assert all(isinstance(it, yimmo.wsgi.FileWrapper) for it in seen), [type(x) for x in seen]
    # The whole body can arrive before the server calls close(): wait for it.
    assert wait_for(lambda: all(it.filelike.closed for it in seen)), "the file was never closed"


def test_flask_send_file_range_request(wsgi_server, download):
    live = wsgi_server(flask_app.create_app(str(download)).wsgi_app)
    data = download.read_bytes()
    resp, body = fetch(live, "GET", "/file", headers={"Range": "bytes=1000-70999"})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == "bytes 1000-70999/%d" % len(data)
    assert body == data[1000:71000]


def test_head_has_the_get_headers_and_no_body(wsgi_server, site):
    live = wsgi_server(site.app)
    with RawConn(live.address) as c:
        c.send(b"HEAD /items/7%s HTTP/1.1\r\nHost: t\r\n\r\nGET /items/7%s HTTP/1.1\r\nHost: t\r\n\r\n"
               % ((b"/", b"/") if site.slash else (b"", b"")))
        head = c.read_response("HEAD")
        get = c.read_response()
    assert head.status == get.status == 200
    assert head.header("content-length") == get.header("content-length") == str(len(get.body))
    assert json.loads(get.body)["id"] == 7


def test_cookies(wsgi_server, site):
    live = wsgi_server(site.app)
    resp, body = fetch(live, "GET", site.url("/cookies/set"))
    assert (resp.status, body) == (200, b"cookies set")
    cookies = resp.msg.get_all("Set-Cookie")
    assert len(cookies) == 3, cookies
    by_name = {c.split("=", 1)[0]: c for c in cookies}
    assert by_name["session"].startswith("session=abc123") and "httponly" in by_name["session"].lower()
    assert by_name["theme"].startswith("theme=dark") and "max-age=3600" in by_name["theme"].lower()
    assert by_name["lang"].startswith("lang=en") and "path=/" in by_name["lang"].lower()
    # Sent back in two Cookie headers, which the server joins with "; ".
    with RawConn(live.address) as c:
        c.send(("GET %s HTTP/1.1\r\nHost: t\r\nCookie: session=abc123; theme=dark\r\n"
                "Cookie: lang=en\r\n\r\n" % site.url("/cookies/get")).encode())
        resp = c.read_response()
    assert json.loads(resp.body) == {"session": "abc123", "theme": "dark", "lang": "en"}


def test_mounted_under_script_name(wsgi_server, site):
    # PEP 3333 URL reconstruction: the framework routes on PATH_INFO and builds
    # URLs from SCRIPT_NAME + PATH_INFO.
    live = wsgi_server(site.app, script_name="/app")
    resp, body = fetch(live, "GET", site.url("/app/where"), headers={"Host": "example.com"})
    assert resp.status == 200
    got = json.loads(body)
    if site.name == "flask":
        assert got == {"url": "/app/where", "external": "http://example.com/app/where",
                       "script_root": "/app", "path": "/where"}
    else:
        assert got == {"script_name": "/app", "path": "/app/where/", "path_info": "/where/",
                       "absolute": "http://example.com/app/where/"}

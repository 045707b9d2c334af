"""The bundled WSGI example: `yimmo-wsgi examples.app:app`.

Routes: / (hello), /json, /echo (POST: the body back), /stream (a chunked
response produced piece by piece), /env (the WSGI environ, as text).
"""
import json


def app(environ, start_response):
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/":
        body = b"Hello, world!\n"
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [body]
    if path == "/json":
        body = json.dumps({"message": "Hello, world!", "server": "yimmo"}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/echo":
        if method != "POST":
            start_response("405 Method Not Allowed", [("Allow", "POST"), ("Content-Type", "text/plain")])
            return [b"POST a body to /echo\n"]
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", environ.get("CONTENT_TYPE", "application/octet-stream"))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return (b"line %d\n" % i for i in range(10))
    if path == "/env":
        lines = ["%s: %r" % (k, environ[k]) for k in sorted(environ)]
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return ["\n".join(lines).encode("utf-8") + b"\n"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"Not Found\n"]

"""The WSGI application every server in bench/wsgi.py serves.

    GET  /       "Hello, world!\\n", text/plain (also the pipelined scenario)
    GET  /10k    10,240 bytes of text/plain
    GET  /json   {"message": "Hello, World!"}, serialized on every request
    POST /echo   the request body, read from wsgi.input, sent back

Every response carries an explicit Content-Length.
"""
import json

HELLO = b"Hello, world!\n"
TEN_K = b"0123456789abcdef" * 640
assert len(TEN_K) == 10240
TEXT = "text/plain"


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        body, ctype = HELLO, TEXT
    elif path == "/10k":
        body, ctype = TEN_K, TEXT
    elif path == "/json":
        body, ctype = json.dumps({"message": "Hello, World!"}).encode(), "application/json"
    elif path == "/echo":
        length = environ.get("CONTENT_LENGTH")
        stream = environ["wsgi.input"]
        body = stream.read(int(length)) if length else stream.read()
        ctype = "application/octet-stream"
    else:
        body = b"not found\n"
        start_response("404 Not Found", [("Content-Type", TEXT),
                                         ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


application = app

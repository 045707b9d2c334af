"""The bundled example app for yimmo.Server.

    python examples/hello.py [--host H] [--port N]

Routes:
    GET  /        "Hello, world!\\n" as text/plain
    GET  /json    a small JSON document
    POST /echo    the request body back, with the request's Content-Type
    GET  /stream  a body sent in pieces with start/write/end
Anything else is a 404. Ctrl-C stops the server.
"""
import argparse
import json
import sys

import yimmo

HELLO = b"Hello, world!\n"
TEXT = [("Content-Type", "text/plain")]


def handler(ex):
    """Answer one request; ex is a yimmo.Exchange."""
    if ex.path == "/":
        ex.respond(200, TEXT, HELLO)
    elif ex.path == "/json":
        body = json.dumps({"message": "Hello, world!", "server": "yimmo",
                           "version": yimmo.__version__}).encode()
        ex.respond(200, [("Content-Type", "application/json")], body)
    elif ex.path == "/echo":
        if ex.method != "POST":
            ex.respond(405, TEXT + [("Allow", "POST")], b"POST a body to /echo\n")
            return
        ctype = ex.headers.get("content-type") or "application/octet-stream"
        ex.respond(200, [("Content-Type", ctype)], ex.body)
    elif ex.path == "/stream":
        # A response whose body is produced piece by piece.
        ex.start(200, TEXT)
        for word in (b"Hello", b", ", b"world", b"!\n"):
            ex.write(word)
        ex.end()
    else:
        ex.respond(404, TEXT, b"Not found\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port to bind (default 8000; 0 picks one)")
    args = ap.parse_args(argv)

    srv = yimmo.Server(handler, host=args.host, port=args.port)
    host, port = srv.address[:2]
    print("yimmo %s serving on http://%s:%d/ (Ctrl-C stops)"
          % (yimmo.__version__, host, port), flush=True)
    try:
        srv.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

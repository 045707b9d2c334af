"""Benchmark target: yimmo.Server answering every request with the hello body.

    python bench/apps/hello_yimmo.py --port N
"""
import argparse

import yimmo

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain")]


def handler(ex):
    ex.respond(200, HEADERS, BODY)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    srv = yimmo.Server(handler, host=args.host, port=args.port)
    try:
        srv.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

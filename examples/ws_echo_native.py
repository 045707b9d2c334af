"""A WebSocket echo server on yimmo.Server's callbacks.

    python examples/ws_echo_native.py [--host H] [--port N] [--no-deflate] [--busy-poll S]

Every message on ws://HOST:PORT/ comes back as it came (text as text,
binary as binary); plain HTTP on / gets a short page.
"""
import argparse

import yimmo


class Echo:
    def on_message(self, ws, msg):
        ws.send(msg)     # as it came: text stays text, no copy


def page(ex):
    ex.respond(200, [("Content-Type", "text/plain")], b"a WebSocket echo lives here\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--no-deflate", action="store_true", help="do not offer permessage-deflate")
    ap.add_argument("--busy-poll", type=float, default=0.0, metavar="SECONDS",
                    help="keep polling this long after input before sleeping (default 0: off)")
    args = ap.parse_args()
    srv = yimmo.Server(page, host=args.host, port=args.port, websocket={"/": Echo()},
                       ws_deflate=not args.no_deflate, busy_poll=args.busy_poll)
    host, port = srv.address
    print("yimmo %s echoing WebSockets on ws://%s:%d/ (Ctrl-C stops)" % (yimmo.__version__, host, port),
          flush=True)
    try:
        srv.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

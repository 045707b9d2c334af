"""socketify's (uWebSockets via cffi) WebSocket echo server, for bench/ws.py.

    python bench/apps/ws_echo_socketify.py --port N [--host H]

Every message on ws://HOST:PORT/ comes back with the opcode it came with.
Compression is off (`CompressOptions.DISABLED`), automatic pings are off,
and the payload and backpressure limits are raised to 16 MiB (the defaults,
16 KiB and 64 KiB, would refuse or drop the 64 KiB benchmark messages).
One process, no workers.
"""
import argparse

from socketify import App, AppListenOptions, CompressOptions

LIMIT = 16 * 1024 * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    app = App()
    app.ws("/*", {
        "compression": CompressOptions.DISABLED,
        "max_payload_length": LIMIT,
        "max_backpressure": LIMIT,
        "idle_timeout": 120,
        "send_pings_automatically": False,
        "message": lambda ws, msg, opcode: ws.send(msg, opcode),
    })
    app.get("/", lambda res, req: res.end("a WebSocket echo lives here\n"))
    app.listen(AppListenOptions(port=args.port, host=args.host), lambda config: None)
    app.run()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

"""The `websockets` library's asyncio WebSocket echo server, for bench/ws.py.

    python bench/apps/ws_echo_websockets.py --port N [--host H]

Every message on ws://HOST:PORT/ comes back as it came. Compression is off
(`compression=None`) and keep-alive pings are off (`ping_interval=None`), so
the echo is all that happens on a connection; `max_size` is raised to 16 MiB
(yimmo's default cap) so that no benchmark size is refused. Plain asyncio
event loop (no uvloop); websockets' C speedups (frame masking) are used when
installed, as they are by default.
"""
import argparse
import asyncio

from websockets.asyncio.server import serve


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def main(host, port):
    async with serve(echo, host, port, compression=None, ping_interval=None,
                     max_size=16 * 1024 * 1024) as server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass

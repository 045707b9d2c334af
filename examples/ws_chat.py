"""A small WebSocket chat room on yimmo.Server's callbacks.

    python examples/ws_chat.py [--host H] [--port N]

Open http://HOST:PORT/ in a few browser tabs: every text message sent on
ws://HOST:PORT/chat goes to every open socket in the room, prefixed with
its sender's name (?name=... in the URL, or a guest number). Joins and
leaves are announced. Callbacks run on the server's loop thread, one at a
time, so the room needs no lock.
"""
import argparse
import json
from urllib.parse import parse_qs

import yimmo

PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>yimmo chat</title>
<pre id="log" style="height:20em;overflow:auto;border:1px solid #ccc"></pre>
<form id="f"><input id="m" autofocus autocomplete="off" size="60"><button>send</button></form>
<script>
const name = prompt("your name?") || "";
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host
                         + "/chat?name=" + encodeURIComponent(name));
const log = document.getElementById("log");
ws.onmessage = (e) => { const m = JSON.parse(e.data);
  log.textContent += (m.from ? m.from + ": " : "* ") + m.text + "\\n"; log.scrollTop = 1e9; };
ws.onclose = (e) => { log.textContent += "* disconnected (" + e.code + ")\\n"; };
document.getElementById("f").onsubmit = (e) => { e.preventDefault();
  const m = document.getElementById("m"); if (m.value) ws.send(m.value); m.value = ""; };
</script>
"""

MAX_TEXT = 4096


class ChatRoom:
    def __init__(self):
        self.members = {}  # ws -> name
        self.guests = 0

    def on_connect(self, ws):
        if len(self.members) >= 1000:
            return 503  # the room is full
        return None

    def on_open(self, ws):
        name = parse_qs(ws.query or "").get("name", [""])[0].strip()[:32]
        if not name:
            self.guests += 1
            name = "guest%d" % self.guests
        self.members[ws] = name
        self.broadcast(None, "%s joined (%d here)" % (name, len(self.members)))

    def on_message(self, ws, msg):
        if not msg.is_text:
            ws.close(1003, "text only")
            return
        text = msg.text
        if len(text) > MAX_TEXT:
            ws.close(1009, "message too long")
            return
        self.broadcast(self.members.get(ws), text)

    def on_close(self, ws, code, reason):
        name = self.members.pop(ws, None)
        if name is not None:
            self.broadcast(None, "%s left" % name)

    def broadcast(self, sender, text):
        data = json.dumps({"from": sender, "text": text})
        for ws in list(self.members):
            if ws.closed:
                continue
            try:
                ws.send(data)
            except BufferError:
                ws.close(1008, "not reading")  # a slow reader does not hold up the room
            except ConnectionError:
                pass


def page(ex):
    ex.respond(200, [("Content-Type", "text/html; charset=utf-8")], PAGE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    srv = yimmo.Server(page, host=args.host, port=args.port, websocket={"/chat": ChatRoom()},
                       ws_send_limit=1 << 20)
    host, port = srv.address[:2]
    print("yimmo %s chat on http://%s:%d/ (Ctrl-C stops)" % (yimmo.__version__, host, port), flush=True)
    try:
        srv.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

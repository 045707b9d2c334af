"""A WebSocket echo as a WSGI application: `yimmo-wsgi examples.ws_echo:app --threads 8`.

environ["yimmo.websocket"] is there on an upgrade request; accept() answers
the handshake and hands back a blocking WebSocket (receive/send/close), so
the application needs worker threads. Plain HTTP gets a short page.
"""


def app(environ, start_response):
    ws = environ.get("yimmo.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a WebSocket echo lives here\n"]
    ws.accept()
    while True:
        msg = ws.receive()
        if msg is None:     # closed (ws.close_code says how)
            break
        ws.send(msg)     # as it came: text stays text, no copy
    return []

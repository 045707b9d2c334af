"""The bundled examples, served the way the README serves them."""
import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request

from apps.harness import Yimmo, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fetch(url, data=None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
        return r.status, r.headers, r.read()


def test_wsgi_example_through_the_cli():
    y = Yimmo("examples.app:app", cwd=ROOT)
    try:
        y.wait_ready(1)
        url = y.url.rstrip("/")
        assert fetch(url + "/")[2] == b"Hello, world!\n"
        status, headers, body = fetch(url + "/json")
        assert headers["Content-Type"] == "application/json" and json.loads(body)["server"] == "yimmo"
        assert fetch(url + "/echo", data=b"ping")[2] == b"ping"
        assert fetch(url + "/stream")[2] == b"".join(b"line %d\n" % i for i in range(10))
    finally:
        y.close()


@contextlib.contextmanager
def example(script):
    """Run examples/SCRIPT --port 0; yields "HOST:PORT" from the line it prints."""
    proc = subprocess.Popen([sys.executable, "examples/" + script, "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://([\d.]+:\d+)", line)
        assert m, line
        yield m.group(1)
        assert proc.poll() is None, "the server died"
    finally:
        proc.terminate()
        proc.wait(10)


def test_native_example():
    with example("hello.py") as where:
        url = "http://" + where
        assert fetch(url + "/")[2] == b"Hello, world!\n"
        assert fetch(url + "/echo", data=b"pong")[2] == b"pong"


def test_chat_example():
    """Two members: joins, a message to the room, a leave. (The room calls
    send() from on_open; that once ran before the connection spoke
    WebSocket and broke the server.)"""
    from websockets.sync.client import connect

    with example("ws_chat.py") as where:
        url = "ws://%s/chat" % where
        recv = lambda c: json.loads(c.recv(timeout=10))  # noqa: E731
        with connect(url + "?name=ann") as ann:
            assert recv(ann) == {"from": None, "text": "ann joined (1 here)"}
            with connect(url + "?name=bob") as bob:
                assert recv(bob) == {"from": None, "text": "bob joined (2 here)"}
                assert recv(ann) == {"from": None, "text": "bob joined (2 here)"}
                bob.send("hi all")
                assert recv(ann) == recv(bob) == {"from": "bob", "text": "hi all"}
            assert recv(ann) == {"from": None, "text": "bob left"}

"""Soak: random valid and hostile traffic against a live server for a while.

    python scripts/soak.py [--seconds 30] [--clients 8] [--threads 4] [--native]

A server runs in a subprocess of this interpreter, with this environment
(under `scripts/memcheck.sh soak` that is the ASan + UBSan build): a WSGI
application (--threads worker threads, 0 for the loop thread), or with
--native a yimmo.Server whose WebSockets are callbacks, on a plain and a TLS
port (certificates made with trustme). --clients threads then send, for
--seconds: keep-alive and pipelined GETs of small, streamed, 1 MiB and failing
responses; POSTs with Content-Length, chunked and Expect: 100-continue bodies
of up to 2 MiB, some cut short; garbage, smuggling attempts, oversized heads
and plain HTTP on the TLS port; WebSocket sessions with valid, fragmented,
oversized, unmasked, invalid-UTF-8 and junk frames; TLS handshakes abandoned
half way. Clients read some of each answer and close or reset the connection.

Afterwards the server must answer a plain and a TLS request, its open file
descriptors must return to what they were at the start, it must stop when
interrupted and exit 0, and its output must hold no sanitizer report. Exit
status 0 when all of that holds, 1 otherwise (with the server's output).
"""
import argparse
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"


# --- The server (run as: soak.py --serve CERT KEY THREADS NATIVE) ------------------


BIG = os.urandom(1 << 20)


def app(environ, start_response):
    """The WSGI application: echo, line counting, 1 MiB, streaming, errors,
    a bad header, and a WebSocket echo (environ["yimmo.websocket"])."""
    path = environ["PATH_INFO"]
    ws = environ.get("yimmo.websocket")
    if ws is not None:
        ws.accept()
        while (msg := ws.receive()) is not None:
            ws.send(msg)
        return []
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/lines":
        n = sum(len(line) for line in environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d\n" % n]
    if path == "/big":
        start_response("200 OK", [("Content-Length", str(len(BIG)))])
        return [BIG]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk %d\n" % i * 50 for i in range(200))
    if path == "/error":
        raise RuntimeError("soak: an application error")
    if path == "/badheader":
        start_response("200 OK", [("X-Bad", "a\r\nb")])
        return [b"never sent"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"),
                              ("Set-Cookie", "b=2")])
    return [b"hello " + path.encode("latin-1")]


class Echo:
    """WebSocket callbacks for --native."""

    def on_message(self, ws, msg):
        try:
            ws.send(msg)
        except BufferError:
            ws.close(1008, "not reading")


def handler(ex):
    if ex.path == "/error":
        raise RuntimeError("soak: a handler error")
    ex.respond(200, [("Content-Type", "text/plain")], ex.body if ex.method == "POST" else b"hello")


# Limits small enough that every stalled client is cut off within seconds.
LIMITS = dict(ws_max_message=1 << 20, ws_send_limit=1 << 20, ws_ping_interval=0.5,
              ws_ping_timeout=0.5, keepalive_timeout=2.0, header_timeout=2.0, body_timeout=2.0,
              send_timeout=2.0, max_body_size=8 << 20)


def serve(cert, key, threads, native):
    import yimmo

    plain = socket.create_server((HOST, 0))
    secure = socket.create_server((HOST, 0))
    common = dict(sock=[(plain, False), (secure, True)], tls={"certfile": cert, "keyfile": key},
                  **LIMITS)
    if native:
        srv = yimmo.Server(handler, websocket={"/ws": Echo()}, **common)
    else:
        srv = yimmo.WSGIServer(app, threads=threads, **common)
    print("ready", plain.getsockname()[1], secure.getsockname()[1], flush=True)
    try:
        srv.run()
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)


# --- The clients -----------------------------------------------------------------


class Chaos:
    """The clients' actions, on a plain port and (if given) a TLS one."""

    def __init__(self, plain, secure=None, cafile=None):
        self.plain, self.secure = plain, secure
        self.ctx = ssl.create_default_context(cafile=cafile) if secure else None
        self.done = {}
        self.lock = threading.Lock()

    def connect(self, rng, tls=None):
        if self.secure is None:
            tls = False
        tls = rng.random() < 0.25 if tls is None else tls
        s = socket.create_connection((HOST, self.secure if tls else self.plain), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(s, server_hostname="localhost") if tls else s

    @staticmethod
    def reset(s):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        s.close()

    @staticmethod
    def drain(s, limit, timeout=2.0):
        s.settimeout(timeout)
        got = 0
        try:
            while got < limit and (b := s.recv(65536)):
                got += len(b)
        except (OSError, ssl.SSLError):
            pass
        s.close()

    def finish(self, rng, s, limit):
        if rng.random() < 0.3:
            self.reset(s)
        else:
            self.drain(s, limit)

    def get(self, rng):
        s = self.connect(rng)
        paths = ["/", "/stream", "/big", "/error", "/badheader", "/%41%2f?q=1", "/x" * 50]
        s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % rng.choice(paths).encode()
                           for _ in range(rng.randint(1, 6))))
        self.finish(rng, s, rng.choice([100, 10000, 1 << 22]))

    def post(self, rng):
        s = self.connect(rng)
        body = rng.randbytes(rng.choice([0, 1, 100, 65536, 65537, 300000, 2 << 20]))
        path = rng.choice([b"/echo", b"/lines", b"/"])
        if rng.random() < 0.5:
            head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % (path, len(body))
            if rng.random() < 0.2:
                head += b"Expect: 100-continue\r\n"
            data = head + b"\r\n" + body
        else:
            chunks, i = [], 0
            while i < len(body):
                piece = body[i:i + rng.randint(1, 70000)]
                chunks.append(b"%x\r\n%s\r\n" % (len(piece), piece))
                i += len(piece)
            data = (b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" % path
                    + b"".join(chunks) + b"0\r\n\r\n")
        cut = len(data) if rng.random() < 0.7 else rng.randint(0, len(data))
        try:
            s.sendall(data[:cut])
        except OSError:
            pass
        self.finish(rng, s, rng.choice([10, 1 << 23]))

    def garbage(self, rng):
        if rng.random() < 0.7:
            s = self.connect(rng, tls=False)
        else:   # not TLS, on the TLS port
            s = socket.create_connection((HOST, self.secure), timeout=5)
        junk = rng.choice([
            rng.randbytes(rng.randint(1, 5000)),
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"\x16\x03\x01\x02\x00" + rng.randbytes(300),
            b"GET / HTTP/1.1\r\nHost: t\r\n" * 3,
        ])
        step = rng.choice([7, len(junk)])
        try:
            for i in range(0, len(junk), step):
                s.sendall(junk[i:i + step])
        except OSError:
            pass
        self.finish(rng, s, 1 << 20)

    @staticmethod
    def frame(rng, opcode, payload, fin=True, masked=True):
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        m = 0x80 if masked else 0
        if n < 126:
            head += bytes([m | n])
        elif n < 65536:
            head += bytes([m | 126]) + struct.pack("!H", n)
        else:
            head += bytes([m | 127]) + struct.pack("!Q", n)
        if not masked:
            return head + payload
        key = rng.randbytes(4)
        return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))

    def websocket(self, rng):
        s = self.connect(rng)
        ext = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if rng.random() < 0.3 else b""
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n" + ext + b"\r\n")
        f = self.frame
        out = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.5:
                size = rng.choice([0, 5, 125, 126, 4096, 70000, 1 << 20, (1 << 20) + 1])
                out.append(f(rng, 2, rng.randbytes(size)))
            elif r < 0.6:
                out.append(f(rng, 1, "héllo €".encode() * rng.randint(0, 100)))
            elif r < 0.7:
                out.append(f(rng, 1, b"bad \xff\xfe utf-8"))
            elif r < 0.8:
                out.append(f(rng, 9, rng.randbytes(rng.randint(0, 125))))
            elif r < 0.85:
                out.append(f(rng, 2, b"frag1", fin=False) + f(rng, 9, b"p") + f(rng, 0, b"frag2"))
            elif r < 0.9:
                out.append(f(rng, 2, b"unmasked", masked=False))
            elif r < 0.95:
                out.append(rng.randbytes(rng.randint(1, 50)))
            else:
                code = rng.choice([1000, 1001, 999, 1005, 3000, 5000])
                out.append(f(rng, 8, struct.pack("!H", code)))
        data = b"".join(out)
        step = rng.choice([len(data) or 1, 1, 13, 4096])
        try:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
        except OSError:
            pass
        self.finish(rng, s, rng.choice([50, 1 << 22]))

    def tls_abandoned(self, rng):
        raw = socket.create_connection((HOST, self.secure), timeout=5)
        try:
            t = self.ctx.wrap_socket(raw, server_hostname="localhost")
            t.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")     # a head never finished
        except (OSError, ssl.SSLError):
            pass
        self.reset(raw)

    ACTIONS = ("get",) * 4 + ("post",) * 3 + ("garbage",) * 2 + ("websocket",) * 3 \
        + ("tls_abandoned",)

    def run(self, seed, seconds, actions=None):
        rng = random.Random(seed)
        actions = actions or self.ACTIONS
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            name = rng.choice(actions)
            try:
                getattr(self, name)(rng)
            except (OSError, ssl.SSLError) as e:
                name += ": " + type(e).__name__
            with self.lock:
                self.done[name] = self.done.get(name, 0) + 1


# --- The driver ------------------------------------------------------------------


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def describe_fds(pid):
    """What each open descriptor is, with the TCP state of sockets."""
    states = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                states[cols[9]] = (cols[1], cols[2], cols[3])
    out = []
    for fd in sorted(os.listdir("/proc/%d/fd" % pid), key=int):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        if m and m.group(1) in states:
            local, remote, st = states[m.group(1)]
            target = "tcp %s -> %s state %s" % (local, remote, st)
        out.append("%s=%s" % (fd, target))
    return ", ".join(out)


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def answers(chaos, tls):
    """Whether the server answers a GET (over TLS if tls)."""
    try:
        with chaos.connect(random.Random(0), tls=tls) as s:
            s.sendall(b"GET /alive HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            s.settimeout(10)
            data = b""
            while (b := s.recv(65536)):
                data += b
    except (OSError, ssl.SSLError):
        return False
    return data.startswith(b"HTTP/1.1 200 ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=4, help="WSGI worker threads (0: loop thread)")
    ap.add_argument("--native", action="store_true", help="yimmo.Server with WebSocket callbacks")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        cert, key, threads, native = args.serve
        serve(cert, key, int(threads), native == "1")
        return 0

    import trustme

    seed = args.seed if args.seed is not None else int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert, key, cafile = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(cafile)
        log = open(os.path.join(tmp, "server.log"), "w+")    # closed with the process
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", cert, key,
                                 str(args.threads), "1" if args.native else "0"],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        what = "yimmo.Server" if args.native else "WSGIServer(threads=%d)" % args.threads
        problems = []
        try:
            soak(proc, args, seed, cafile, what, problems)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read()
        if re.search(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer", output):
            problems.append("a sanitizer report")
        for p in problems:
            print("soak: FAILED: " + p, file=sys.stderr)
        if problems:
            print(output[-20000:], file=sys.stderr)
            return 1
        return 0


def soak(proc, args, seed, cafile, what, problems):
    """The clients against the running server, then the checks."""
    ready = proc.stdout.readline().split()
    if ready[:1] != ["ready"]:
        problems.append("the server did not start")
        return
    chaos = Chaos(int(ready[1]), int(ready[2]), cafile)
    # The baseline once run() has set itself up (its wake-up pipe).
    answers(chaos, False)
    fds = open_fds(proc.pid)
    threads = [threading.Thread(target=chaos.run, args=(seed + i, args.seconds))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("soak %s, seed %d, %g s: %s" % (what, seed, args.seconds, ", ".join(
        "%s %d" % kv for kv in sorted(chaos.done.items()))))
    if proc.poll() is not None:
        problems.append("the server died (exit %d)" % proc.returncode)
        return
    for tls in (False, True):
        if not answers(chaos, tls):
            problems.append("no answer over %s afterwards" % ("TLS" if tls else "TCP"))
    # Keep-alive and WebSocket timeouts are 2 s: every client connection is
    # gone well within 10.
    if not wait_for(lambda: open_fds(proc.pid) <= fds, 10):
        problems.append("%d file descriptors open, %d at the start: %s"
                        % (open_fds(proc.pid), fds, describe_fds(proc.pid)))
    proc.send_signal(signal.SIGINT)
    try:
        rest = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        rest = proc.communicate()[0]
        problems.append("the server did not stop on SIGINT")
    if proc.returncode != 0 or "stopped" not in rest:
        problems.append("the server exited with %d" % proc.returncode)

if __name__ == "__main__":
    sys.exit(main())

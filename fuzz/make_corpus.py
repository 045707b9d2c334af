"""Write the seed corpora fuzz/corpus/<target>/ from tests/parser_cases.

    python fuzz/make_corpus.py

Deterministic (fixed seed, files named by the SHA-1 of their bytes), so a
rerun changes nothing unless the cases did. Seeds are small and varied: every
parser case, a few pipelines of valid ones, and hand-written chunked bodies;
for WebSocket every case of tests/test_ws_frames.py (as sent and with plain
payloads), text around the UTF-8 boundaries whole and split, and messages
deflated by zlib, as they are and corrupted.
"""
import hashlib
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import zlib  # noqa: E402

from checks import (_ENVIRON_REMOTES, _ENVIRON_SCHEMES, _ENVIRON_SCRIPT_NAMES,  # noqa: E402
                    _ENVIRON_SERVERS, _LIMIT_CHOICES, CHUNKED_HEAD, deflate_message,
                    encode_environ_input, encode_utf8_input, encode_ws_frames_input, ws_frame)
from test_parser import CASES  # noqa: E402
from test_ws_frames import CASES as WS_CASES  # noqa: E402

UTF8_TEXTS = [
    b"", b"Hello, world", "κόσμε".encode(), "\U0001F600 \U0010FFFF \u20ac".encode(),
    b"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf",
    b"abcdefgh" * 3 + "é".encode(),
    b"ab\xffcd", b"\x80", b"a\xc0\x80", b"\xe0\x80\xaf", b"x\xed\xa0\x80", b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xce" + b"x", b"ab\xce", b"\xf0\x90\x80",
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", b"abcdefg\xc1\xbf",
]

CHUNKED_EXTRA = [
    b"0\r\n\r\n",
    b"1\r\na\r\n0\r\n\r\n",
    b"5;a=b;c=\"d\\\"e\"\r\nhello\r\n0\r\nx-t: 1\r\ny: \r\n\r\n",
    b"000010\r\n0123456789abcdef\r\n0;last\r\n\r\n",
    b"3 ; q = \"x\" \r\nabc\r\n0\r\n\r\n",
    b"F\r\n" + bytes(range(15)) + b"\r\n0\r\n\r\n",
]


def write(target, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def split_input(limits, data, cuts):
    sel = 0
    for k, (name, choices) in enumerate(_LIMIT_CHOICES.items()):
        if name in limits:
            if limits[name] not in choices:
                return None
            sel |= choices.index(limits[name]) << (2 * k)
    cuts = cuts[:63]
    head = bytes([sel & 0xFF, (sel >> 8) | (len(cuts) << 2)])
    return head + b"".join(struct.pack(">H", c) for c in cuts) + data


def ws_seeds(rng):
    for c in WS_CASES:
        if len(c.data) > 4000:
            continue
        for premask in (False, True):
            raw = encode_ws_frames_input(c.data, premask=premask, **c.settings)
            if raw is not None:
                write("ws_frames", raw)
    for text in UTF8_TEXTS:
        write("ws_utf8", encode_utf8_input(text))
        for n in (1, 2, 3):
            cuts = sorted(rng.randint(0, len(text)) for _ in range(n))
            write("ws_utf8", encode_utf8_input(text, cuts, pings=n == 2))
    texts = [b"", b"a", b"Hello, world", b"abcabcabcabcabcabc", bytes(range(256)),
             "κόσμε ".encode() * 20, b"\0" * 300]
    for i, text in enumerate(texts):
        # byte 0: valid mode, max_size choice, takeover, finish, full flush
        b0 = 1 | (i % 8) << 1 | (0x10 if i & 1 else 0) | (0x20 if i == 3 else 0)
        b0 |= 0x40 if i == 4 else 0
        head = bytes([b0, (i * 13) % 50, (i * 37) % 256, i % 3])
        write("ws_inflate", head + text)
        msg = deflate_message(text, -(9 + i % 7), (i * 3) % 10, pieces=1 + i % 3)
        random_head = bytes([(i % 8) << 1, 0, 200, 0])
        write("ws_inflate", random_head + msg)
        if len(msg) > 2:
            cut = msg[:len(msg) // 2]
            flip = bytearray(msg)
            flip[len(msg) // 3] ^= 0x5A
            write("ws_inflate", random_head + cut)
            write("ws_inflate", random_head + bytes(flip))
            write("ws_inflate", random_head + msg + b"\x00")
        fin = zlib.compressobj(9, zlib.DEFLATED, -15)
        write("ws_inflate", random_head + fin.compress(text) + fin.flush())


# Requests that reach each environ rule: percent-escapes (also bad and at the
# end), SCRIPT_NAME prefixes, every target form, Host forms, repeats, Cookie,
# Content-*, names with '_', bodies.
ENVIRON_EXTRA = [
    b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /app/x%2Fy?q=%20&r HTTP/1.1\r\nHost: h:8080\r\n\r\n",
    b"GET /apples HTTP/1.1\r\nHost: [::1]:81\r\n\r\n",
    b"GET /a%20b%e9%ZZ%4 HTTP/1.1\r\nHost: [::1]\r\n\r\n",
    b"GET /a%2 HTTP/1.0\r\n\r\n",
    b"GET http://x.org:9/p%41?q HTTP/1.1\r\nHost: other\r\n\r\n",
    b"GET http://x.org?q HTTP/1.1\r\nHost: other\r\n\r\n",
    b"GET https://[fe80::1]:443 HTTP/1.1\r\nHost: other\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h:\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nX-A:\r\nCookie: a=1\r\n"
    b"cookie: b=2\r\nX_A: spoof\r\nUser-Agent: u\r\nAccept: */*\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain; charset=latin-1\r\n"
    b"Content-Length: 5\r\nX: \xe9\xff\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nT: t\r\n\r\n",
    b"PATCH /%E9%C3%A9 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n",
]


def environ_seeds(rng, valid):
    datas = [c.data for c in valid] + ENVIRON_EXTRA
    for i, data in enumerate(datas):
        settings = {"script_name": _ENVIRON_SCRIPT_NAMES[i % 4],
                    "url_scheme": _ENVIRON_SCHEMES[i // 4 % 2],
                    "remote": rng.choice(_ENVIRON_REMOTES),
                    "server": rng.choice(_ENVIRON_SERVERS)}
        write("wsgi_environ", encode_environ_input(data, **settings))
    for c in rng.sample(valid, 10):
        write("wsgi_environ", encode_environ_input(c.data[:len(c.data) // 2]))


def main():
    rng = random.Random(7)
    plain = [c for c in CASES if not c.limits]
    valid = [c for c in plain if c.error is None and c.expect and not c.pending]
    for c in plain:
        write("http_request", c.data)
        if c.data.startswith(CHUNKED_HEAD.replace(b"/c", b"/")):
            write("http_chunked", c.data[len(CHUNKED_HEAD) - 1:])
    for body in CHUNKED_EXTRA:
        write("http_chunked", body)
    for c in CASES:
        cuts = sorted(rng.sample(range(len(c.data) + 1), min(len(c.data) + 1, rng.randint(0, 4))))
        raw = split_input(c.limits, c.data, cuts)
        if raw is not None:
            write("http_split", raw)
    for c in valid:
        write("http_h11_diff", c.data)
    for _ in range(12):
        data = b"".join(c.data for c in rng.sample(valid, 3))
        write("http_request", data)
        write("http_h11_diff", data)
        write("http_split", split_input({}, data, sorted(rng.sample(range(len(data)), 3))))
    ws_seeds(rng)
    environ_seeds(rng, valid)
    for t in ("http_request", "http_chunked", "http_split", "http_h11_diff",
              "ws_frames", "ws_utf8", "ws_inflate", "wsgi_environ"):
        d = os.path.join(HERE, "corpus", t)
        print("%-14s %4d seeds" % (t, len(os.listdir(d))))


if __name__ == "__main__":
    main()

"""Write the seed corpora fuzz/corpus/<target>/ from tests/parser_cases.

    python fuzz/make_corpus.py

Deterministic (fixed seed, files named by the SHA-1 of their bytes), so a
rerun changes nothing unless the cases did. Seeds are small and varied: every
parser case, a few pipelines of valid ones, and hand-written chunked bodies.
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

from checks import _LIMIT_CHOICES, CHUNKED_HEAD  # noqa: E402
from test_parser import CASES  # noqa: E402

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
    for t in ("http_request", "http_chunked", "http_split", "http_h11_diff"):
        d = os.path.join(HERE, "corpus", t)
        print("%-14s %4d seeds" % (t, len(os.listdir(d))))


if __name__ == "__main__":
    main()

"""Replay the fuzz seed corpora and every regression input (fuzz/README.md).

Runs on the normal build, without atheris: each harness in fuzz/ is a thin
wrapper around a check in fuzz/checks.py, and this calls the same checks.
fuzz/regressions/<target>/ holds the minimized input of every crash or
disagreement a fuzzer found; it must never come back.
"""
import gc
import os
import sys
import tracemalloc

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
sys.path.insert(0, FUZZ)

import checks  # noqa: E402

CHECKS = {
    "http_request": checks.check_request,
    "http_chunked": checks.check_chunked,
    "http_split": checks.check_split,
    "http_h11_diff": checks.check_h11,
}


def inputs(kind):
    out = []
    for target in sorted(CHECKS):
        d = os.path.join(FUZZ, kind, target)
        if os.path.isdir(d):
            out += [(target, os.path.join(d, f)) for f in sorted(os.listdir(d))
                    if not f.startswith((".", "README"))]
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def needs(target):
    if target == "http_h11_diff":
        pytest.importorskip("h11")


REGRESSIONS = inputs("regressions")


@pytest.mark.parametrize("target,path", REGRESSIONS,
                         ids=["%s/%s" % (t, os.path.basename(p)) for t, p in REGRESSIONS])
def test_regression(target, path):
    needs(target)
    CHECKS[target](read(path))


@pytest.mark.parametrize("target", sorted(CHECKS))
def test_seed_corpus(target):
    needs(target)
    seeds = [p for t, p in inputs("corpus") if t == target]
    assert len(seeds) >= 20, "fuzz/corpus/%s is (nearly) empty" % target
    for path in seeds:
        try:
            CHECKS[target](read(path))
        except AssertionError as e:
            raise AssertionError("%s: %s" % (os.path.relpath(path, ROOT), e)) from None


def test_checks_catch_forged_framing():
    """The reference is not vacuous: a wrong body or end is a Finding."""
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcNEXT"
    req = checks.parse_http_request(data)
    assert checks.check_accepted(data, req) == len(data) - 4
    for k, forged in ((6, b"abX"), (7, len(data)), (9, True), (5, [(b"host", b"h")])):
        bad = req[:k] + (forged,) + req[k + 1:]
        with pytest.raises(checks.Finding):
            checks.check_accepted(data, bad)
    body = b"5\r\nhello\r\n0\r\nt: v\r\n\r\n"
    assert checks.ref_dechunk(body + b"X") == (b"hello", len(body))
    for bad in (b"5 \r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"5;=\r\nhello\r\n0\r\n\r\n",
                b"0\r\nt : v\r\n\r\n", b"-1\r\n", b"5\nhello\r\n0\r\n\r\n"):
        assert checks.ref_dechunk(bad) is None, bad


def test_split_input_layout():
    raw = bytes([0b01, 2 << 2]) + b"\x00\x03\x00\x05" + b"GET / HTTP/1.1\r\n"
    limits, chunks = checks.decode_split_input(raw)
    assert limits == {"max_request_line": 12}
    assert chunks == [b"GET", b" /", b" HTTP/1.1\r\n"]


def test_corpus_replay_does_not_leak():
    """The parser's PyMem blocks are traced: replaying twice must not grow them."""
    seeds = [(t, read(p)) for t, p in inputs("corpus") if t != "http_h11_diff"]

    def replay():
        for target, data in seeds:
            CHECKS[target](data)

    replay()  # warm caches (interned strings, type caches)
    gc.collect()
    tracemalloc.start()
    try:
        replay()
        gc.collect()
        before = tracemalloc.take_snapshot()
        for _ in range(3):
            replay()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # C allocations are traced to the Python line that called into C: only
    # those made under checks.py are the parser's (other threads, e.g. a
    # server a previous test left draining, are not this test's business).
    only = [tracemalloc.Filter(True, checks.__file__)]
    after, before = after.filter_traces(only), before.filter_traces(only)
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 4096, [s for s in after.compare_to(before, "lineno")[:5]]

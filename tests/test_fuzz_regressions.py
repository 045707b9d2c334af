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
    "ws_frames": checks.check_ws_frames,
    "ws_utf8": checks.check_ws_utf8,
    "ws_inflate": checks.check_ws_inflate,
    "wsgi_environ": checks.check_environ,
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


def test_ws_reference_matches_the_frame_cases():
    """ref_ws_frames gives every tests/test_ws_frames.py case its frames,
    close code and error offset; the checks refuse forged results."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_ws_frames import CASES

    for case in CASES:
        frames, masks, err = checks.ref_ws_frames(case.data, **case.settings)
        assert frames == case.frames, case
        assert (err and err[0]) == case.error, case
        if case.at is not None:
            assert err[1] == case.at + 1, case
    # A stream the parser accepts, held to a wrong reference, is a Finding.
    data = checks.ws_frame(checks.WS_TEXT, b"hi") + checks.ws_frame(checks.WS_PING, b"p")
    real = checks.ref_ws_frames
    try:
        checks.ref_ws_frames = lambda d, **kw: ([(1, 0, 1, b"hj")], [b"\x37\xfa\x21\x3d"], None)
        with pytest.raises(checks.Finding):
            checks.check_ws_stream(data, {})
    finally:
        checks.ref_ws_frames = real


def test_ws_utf8_reference():
    """Utf8Ref flags the first impossible byte, including the truncated
    surrogate CPython's incremental decoder holds back (ED A0..BF)."""
    for text, bad in ((b"ab\xffcd", 2), (b"x\xed\xa0\x80", 2), (b"\xe0\x80", 1),
                      (b"\xf4\x90", 1), (b"\xf0\x90\x80x", 3), (b"\xc0", 0), (b"ok", None)):
        assert checks.Utf8Ref().feed(text) == bad, text
    r = checks.Utf8Ref()
    assert r.feed(b"a\xed") is None and r.feed(b"\xa0") == 0
    r = checks.Utf8Ref()
    assert r.feed(b"\xce") is None and not r.finish()
    raw = checks.encode_utf8_input(b"ab\xce\xba", [3], pings=True)
    assert checks.decode_utf8_input(raw) == (b"\x37\xfa\x21\x3d", [3], True, b"ab\xce\xba")


def test_ws_inflate_reference():
    """ref_inflate: zlib's verdicts, both where a message is corrupt and too big."""
    import zlib

    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    final = c.compress(b"hello") + c.flush()
    assert checks.ref_inflate(final, 100) == [("ok", b"hello")] * 2
    assert checks.ref_inflate(final + b"x", 100) == [(1007, None)] * 2
    assert checks.ref_inflate(final, 4) == [(1009, None)] * 2
    synced = checks.deflate_message(b"hello")
    assert checks.ref_inflate(synced, 5) == [("open", b"hello")] * 2
    # One literal, then a stored block with bad lengths: over a max_size of
    # 0 before the tail shows the corruption; both answers are fine.
    assert checks.ref_inflate(b"J\x02\x00\x00", 0) == [(1007, None), (1009, None)]
    assert checks.ref_inflate(b"", 0) == [("ok", b"")]


def test_corpus_replay_does_not_leak():
    """The parser's PyMem blocks are traced: replaying must not grow them.

    A leak grows every window of three replays alike; the interpreter's own
    caches (free lists, frames kept for a traceback) can move a few KB once.
    So the growth is measured over up to three windows and one under the
    bound passes; a real leak fails all three.
    """
    seeds = [(t, read(p)) for t, p in inputs("corpus") if t != "http_h11_diff"]

    def replay():
        for target, data in seeds:
            CHECKS[target](data)

    replay()  # warm caches (interned strings, type caches)
    gc.collect()
    # C allocations are traced to the Python line that called into C: only
    # those made under checks.py are the parser's (other threads, e.g. a
    # server a previous test left draining, are not this test's business).
    only = [tracemalloc.Filter(True, checks.__file__)]
    tracemalloc.start()
    try:
        replay()
        gc.collect()
        before = tracemalloc.take_snapshot().filter_traces(only)
        windows = []
        for _ in range(3):
            for _ in range(3):
                replay()
            gc.collect()
            after = tracemalloc.take_snapshot().filter_traces(only)
            diff = after.compare_to(before, "lineno")
            growth = sum(s.size_diff for s in diff)
            if growth < 4096:
                break
            windows.append((growth, diff[:5]))
            before = after
    finally:
        tracemalloc.stop()
    assert growth < 4096, windows


def test_environ_check_catches_forged_environs(monkeypatch):
    """check_environ is not vacuous: each forged entry is a Finding."""
    import yimmo.parsers

    real = yimmo.parsers.build_wsgi_environ
    data = checks.encode_environ_input(
        b"GET /app/a%41?q HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nContent-Type: t\r\n\r\n",
        script_name="/app")
    assert checks.check_environ(data)["HTTP_X_A"] == "1,2"
    forgeries = [
        lambda e: e.update(PATH_INFO="/a%41"),
        lambda e: e.update(QUERY_STRING="q=1"),
        lambda e: e.update(HTTP_X_A="1, 2"),
        lambda e: e.update(HTTP_X_A=b"1,2"),
        lambda e: e.update({"HTTP_X-A": "1,2"}),
        lambda e: e.update({"HTTP_x_a": "1,2"}),
        lambda e: e.update(HTTP_CONTENT_TYPE="t"),
        lambda e: e.update(SERVER_NAME="x"),
        lambda e: e.update(REQUEST_METHOD="POST"),
        lambda e: e.update(SCRIPT_NAME=""),
        lambda e: e.update({"wsgi.input": __import__("io").BytesIO(b"x")}),
        lambda e: e.pop("REMOTE_PORT"),
    ]
    for forge in forgeries:
        def fake(*args, **kw):
            env = real(*args, **kw)
            forge(env)
            return env
        monkeypatch.setattr(yimmo.parsers, "build_wsgi_environ", fake)
        with pytest.raises(checks.Finding):
            checks.check_environ(data)

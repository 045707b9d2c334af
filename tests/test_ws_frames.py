"""Data-driven tests for the WebSocket frame parser (csrc/ws/frame.c).

Each case in CASES is data: the bytes a client sends (built with frame()),
the parser's settings, and what must come out: the complete frames as
(fin, rsv, opcode, payload) tuples, and the close code of the error raised
after them (None: no error). RFC 6455 section numbers name the rule.

yimmo.parsers.parse_ws_frames is one-shot, but the C parser under it is
resumable, so every case is also driven on every prefix of its bytes (byte
by byte, and "split at every position": the first part alone, then the
whole). For each prefix:

- it never raises an error the whole input does not raise;
- the frames it returns are a prefix of the whole input's frames, and grow
  monotonically as the prefix grows;
- once a prefix raises, every longer prefix raises the same close code.

Cases with an `at` offset say exactly where the error must be detected:
the prefix data[:at] parses cleanly and data[:at + 1] fails (for UTF-8: the
first invalid byte, RFC 6455 8.1 "fail fast", also across fragments).
"""
import random
import struct

import pytest

from yimmo import ParseError
from yimmo.parsers import parse_ws_frames

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload=b"", fin=True, rsv=0, mask=MASK, length=None, ext=None):
    """The bytes of one frame. rsv: the three RSV bits as a number (4 = RSV1).
    length overrides the length field; ext forces a 16- or 64-bit length."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    m = 0x80 if mask else 0
    if ext == 16 or (ext is None and 126 <= n < 65536):
        head = bytes([b0, 126 | m]) + struct.pack("!H", n)
    elif ext == 64 or (ext is None and n >= 65536):
        head = bytes([b0, 127 | m]) + struct.pack("!Q", n)
    else:
        head = bytes([b0, n | m])
    if mask:
        head += mask
        payload = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
    return head + payload


def hsize(data):
    """The header size of the frame at the start of data."""
    n = 2 + {126: 2, 127: 8}.get(data[1] & 0x7F, 0)
    return n + (4 if data[1] & 0x80 else 0)


class C:
    def __init__(self, name, data, frames=(), error=None, at=None, **settings):
        self.name, self.data, self.frames = name, data, [tuple(f) for f in frames]
        self.error, self.at, self.settings = error, at, settings

    def __repr__(self):
        return self.name


_ok = frame(TEXT, b"ok")
_bad_utf8_frag = frame(TEXT, b"ab\xce", fin=False)          # a valid lead byte at the end
_kosme = "κόσμε".encode()

CASES = [
    # --- valid frames -------------------------------------------------------
    C("text", frame(TEXT, b"Hello"), [(1, 0, TEXT, b"Hello")]),
    C("binary", frame(BINARY, bytes(range(256)) * 2), [(1, 0, BINARY, bytes(range(256)) * 2)]),
    C("empty text", frame(TEXT), [(1, 0, TEXT, b"")]),
    C("empty binary", frame(BINARY), [(1, 0, BINARY, b"")]),
    C("utf-8 text", frame(TEXT, _kosme), [(1, 0, TEXT, _kosme)]),
    C("4-byte utf-8", frame(TEXT, "\U0001F600 \U0010FFFF".encode()),
      [(1, 0, TEXT, "\U0001F600 \U0010FFFF".encode())]),
    C("125 bytes, 7-bit length", frame(BINARY, b"x" * 125), [(1, 0, BINARY, b"x" * 125)]),
    C("126 bytes, 16-bit length", frame(BINARY, b"y" * 126), [(1, 0, BINARY, b"y" * 126)]),
    C("65535 bytes, 16-bit length", frame(BINARY, b"z" * 65535), [(1, 0, BINARY, b"z" * 65535)]),
    C("65536 bytes, 64-bit length", frame(BINARY, b"w" * 65536), [(1, 0, BINARY, b"w" * 65536)]),
    C("zero mask key", frame(TEXT, b"abc", mask=b"\0\0\0\0"), [(1, 0, TEXT, b"abc")]),
    C("ping", frame(PING, b"hi"), [(1, 0, PING, b"hi")]),
    C("pong", frame(PONG), [(1, 0, PONG, b"")]),
    C("ping 125 bytes", frame(PING, b"p" * 125), [(1, 0, PING, b"p" * 125)]),
    C("close with code and reason", frame(CLOSE, b"\x03\xe8bye"), [(1, 0, CLOSE, b"\x03\xe8bye")]),
    C("close empty", frame(CLOSE), [(1, 0, CLOSE, b"")]),
    C("several frames", frame(TEXT, b"a") + frame(BINARY, b"b") + frame(PING) + frame(TEXT, b"c"),
      [(1, 0, TEXT, b"a"), (1, 0, BINARY, b"b"), (1, 0, PING, b""), (1, 0, TEXT, b"c")]),
    C("fragmented text",
      frame(TEXT, b"Hel", fin=False) + frame(CONT, b"lo", fin=False) + frame(CONT, b"!"),
      [(0, 0, TEXT, b"Hel"), (0, 0, CONT, b"lo"), (1, 0, CONT, b"!")]),
    C("fragments with empty parts",
      frame(BINARY, fin=False) + frame(CONT, fin=False) + frame(CONT, b"x"),
      [(0, 0, BINARY, b""), (0, 0, CONT, b""), (1, 0, CONT, b"x")]),
    C("control frames between fragments (5.4)",
      frame(TEXT, b"fra", fin=False) + frame(PING, b"1") + frame(CONT, b"gm", fin=False)
      + frame(PONG) + frame(CONT, b"ent"),
      [(0, 0, TEXT, b"fra"), (1, 0, PING, b"1"), (0, 0, CONT, b"gm"), (1, 0, PONG, b""),
       (1, 0, CONT, b"ent")]),
    C("utf-8 character split across fragments (8.1)",
      frame(TEXT, _kosme[:3], fin=False) + frame(CONT, _kosme[3:]),
      [(0, 0, TEXT, _kosme[:3]), (1, 0, CONT, _kosme[3:])]),
    C("binary is not utf-8 checked", frame(BINARY, b"\xff\xfe\xc0"), [(1, 0, BINARY, b"\xff\xfe\xc0")]),
    C("message after a fragmented one", frame(TEXT, b"a", fin=False) + frame(CONT, b"b") + _ok,
      [(0, 0, TEXT, b"a"), (1, 0, CONT, b"b"), (1, 0, TEXT, b"ok")]),
    C("rsv1 when negotiated (RFC 7692)", frame(TEXT, b"\xf2\x48\xcd", rsv=4),
      [(1, 4, TEXT, b"\xf2\x48\xcd")], rsv_allowed=0x40),
    C("compressed text is not utf-8 checked in the codec",
      frame(TEXT, b"\xff\x00", rsv=4, fin=False) + frame(CONT, b"\xfe"),
      [(0, 4, TEXT, b"\xff\x00"), (1, 0, CONT, b"\xfe")], rsv_allowed=0x40),
    C("unmasked frame allowed when not required", frame(TEXT, b"srv", mask=None),
      [(1, 0, TEXT, b"srv")], require_mask=False),
    C("exactly max_message", frame(BINARY, b"m" * 10), [(1, 0, BINARY, b"m" * 10)], max_message=10),
    C("fragments exactly max_message", frame(BINARY, b"m" * 6, fin=False) + frame(CONT, b"m" * 4),
      [(0, 0, BINARY, b"m" * 6), (1, 0, CONT, b"m" * 4)], max_message=10),
    C("control frames do not count toward max_message",
      frame(BINARY, b"m" * 4, fin=False) + frame(PING, b"p" * 20) + frame(CONT, b"m"),
      [(0, 0, BINARY, b"m" * 4), (1, 0, PING, b"p" * 20), (1, 0, CONT, b"m")], max_message=5),

    # --- protocol errors: 1002 ----------------------------------------------
    C("unmasked client frame (5.1)", _ok + frame(TEXT, b"hi", mask=None), [(1, 0, TEXT, b"ok")],
      1002, at=len(_ok) + 1),
    C("unmasked empty frame (5.1)", frame(PING, mask=None), [], 1002, at=1),
    C("rsv1 without an extension (5.2)", frame(TEXT, b"x", rsv=4), [], 1002, at=5),
    C("rsv2 (5.2)", frame(BINARY, b"x", rsv=2), [], 1002, at=5),
    C("rsv3 (5.2)", frame(BINARY, b"x", rsv=1), [], 1002, at=5),
    C("rsv2 with permessage-deflate (RFC 7692 6)", frame(TEXT, b"x", rsv=2), [], 1002, at=5,
      rsv_allowed=0x40),
    C("rsv1 on a continuation (RFC 7692 6.1)",
      frame(TEXT, b"a", rsv=4, fin=False) + frame(CONT, b"b", rsv=4),
      [(0, 4, TEXT, b"a")], 1002, at=7 + 5, rsv_allowed=0x40),
    C("rsv1 on a control frame (RFC 7692 6.1)", frame(PING, b"x", rsv=4), [], 1002, at=5,
      rsv_allowed=0x40),
    C("reserved data opcode 3 (5.2)", frame(0x3), [], 1002, at=5),
    C("reserved data opcode 7 (5.2)", _ok + frame(0x7, b"x"), [(1, 0, TEXT, b"ok")], 1002,
      at=len(_ok) + 5),
    C("reserved control opcode 0xB (5.2)", frame(0xB), [], 1002, at=5),
    C("reserved control opcode 0xF (5.2)", frame(0xF, b"x"), [], 1002, at=5),
    C("ping longer than 125 (5.5)", frame(PING, b"p" * 126), [], 1002, at=7),
    C("close longer than 125 (5.5)", frame(CLOSE, b"\x03\xe8" + b"r" * 124), [], 1002, at=7),
    C("pong with 64-bit length (5.5)", frame(PONG, b"p" * 65536), [], 1002, at=13),
    C("fragmented ping (5.5)", frame(PING, b"a", fin=False), [], 1002, at=5),
    C("fragmented close (5.5)", frame(CLOSE, b"\x03\xe8", fin=False), [], 1002, at=5),
    C("non-minimal 16-bit length (5.2)", frame(BINARY, b"x" * 125, ext=16), [], 1002, at=7),
    C("non-minimal 16-bit length of 0 (5.2)", frame(BINARY, ext=16), [], 1002, at=7),
    C("non-minimal 64-bit length (5.2)", frame(BINARY, b"x" * 65535, ext=64), [], 1002, at=13),
    C("non-minimal 64-bit length of 5 (5.2)", frame(TEXT, b"hello", ext=64), [], 1002, at=13),
    C("64-bit length with its MSB set (5.2)", frame(BINARY, length=1 << 63), [], 1002, at=13),
    C("64-bit length all ones (5.2)", frame(BINARY, length=(1 << 64) - 1), [], 1002, at=13),
    C("64-bit MSB set, unmasked header", frame(BINARY, length=1 << 63, mask=None), [], 1002,
      at=9, require_mask=False),
    C("continuation without a start (5.4)", frame(CONT, b"x"), [], 1002, at=5),
    C("continuation after a finished message (5.4)", _ok + frame(CONT, b"x"),
      [(1, 0, TEXT, b"ok")], 1002, at=len(_ok) + 5),
    C("new text inside a fragmented message (5.4)",
      frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), [(0, 0, TEXT, b"a")], 1002, at=7 + 5),
    C("new binary inside a fragmented text (5.4)",
      frame(TEXT, b"a", fin=False) + frame(PING) + frame(BINARY, b"b", fin=False),
      [(0, 0, TEXT, b"a"), (1, 0, PING, b"")], 1002, at=7 + 6 + 5),

    # --- invalid UTF-8: 1007, on the first bad byte ---------------------------
    C("invalid byte 0xff", frame(TEXT, b"ab\xffcd"), [], 1007, at=6 + 2),
    C("lone continuation byte", frame(TEXT, b"\x80"), [], 1007, at=6),
    C("overlong 2-byte NUL", frame(TEXT, b"a\xc0\x80"), [], 1007, at=6 + 1),
    C("overlong 3-byte", frame(TEXT, b"\xe0\x80\xaf"), [], 1007, at=6 + 1),
    C("surrogate U+D800", frame(TEXT, b"x\xed\xa0\x80"), [], 1007, at=6 + 2),
    C("code point past U+10FFFF", frame(TEXT, b"\xf4\x90\x80\x80"), [], 1007, at=6 + 1),
    C("lead byte 0xf5", frame(TEXT, b"\xf5\x80\x80\x80"), [], 1007, at=6),
    C("truncated sequence then ASCII", frame(TEXT, b"\xce" + b"x"), [], 1007, at=6 + 1),
    C("Autobahn 6.3.1 kosme with a surrogate",
      frame(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
      [], 1007, at=6 + 12),
    C("message ends inside a character", frame(TEXT, b"ab\xce"), [], 1007, at=6 + 2),
    C("last fragment ends inside a character",
      frame(TEXT, b"a", fin=False) + frame(CONT, b"\xe2\x82"), [(0, 0, TEXT, b"a")], 1007,
      at=7 + 7),
    C("bad byte in the second fragment, across the boundary",
      _bad_utf8_frag + frame(CONT, b"x"), [(0, 0, TEXT, b"ab\xce")], 1007,
      at=len(_bad_utf8_frag) + 6),
    C("bad byte in a later fragment after a ping",
      frame(TEXT, b"ok", fin=False) + frame(PING, b"p") + frame(CONT, b"fine\xc3\x28"),
      [(0, 0, TEXT, b"ok"), (1, 0, PING, b"p")], 1007, at=8 + 7 + 6 + 5),
    C("fragmented binary is not checked", frame(BINARY, b"\xce", fin=False) + frame(CONT, b"x"),
      [(0, 0, BINARY, b"\xce"), (1, 0, CONT, b"x")]),

    # --- too big: 1009 ---------------------------------------------------------
    C("frame over max_message", frame(BINARY, b"m" * 11), [], 1009, at=5, max_message=10),
    C("text over max_message", frame(TEXT, b"m" * 200), [], 1009, at=7, max_message=199),
    C("fragments over max_message", frame(BINARY, b"m" * 6, fin=False) + frame(CONT, b"m" * 5),
      [(0, 0, BINARY, b"m" * 6)], 1009, at=12 + 5, max_message=10),
    C("64-bit length over the default 16 MiB", frame(BINARY, length=(16 << 20) + 1), [], 1009,
      at=13),
    C("a limit does not reset inside a message",
      frame(BINARY, b"m" * 4, fin=False) + frame(CONT, b"m" * 4, fin=False) + frame(CONT, b"m" * 4),
      [(0, 0, BINARY, b"m" * 4), (0, 0, CONT, b"m" * 4)], 1009, at=20 + 5, max_message=10),
]


def run(data, settings):
    """(frames, consumed, None) or (frames so far unknown -> None, None, code)."""
    try:
        frames, consumed = parse_ws_frames(data, **settings)
    except ParseError as e:
        assert e.args[2] == "websocket" and e.args[1] == e.args[3], e.args
        assert e.status == e.code, e.args
        return None, None, e.code
    return [tuple(f) for f in frames], consumed, None


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_whole(case):
    frames, consumed, error = run(case.data, case.settings)
    assert error == case.error
    if case.error is None:
        assert frames == case.frames
        assert consumed == len(case.data)
    else:
        # The frames before the bad one parse cleanly on their own.
        good = run(case.data[:case.at], case.settings)
        assert good[2] is None
        assert good[0] == case.frames


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_every_prefix(case):
    """Byte by byte: data[:i] for every i (the parser gathers a header and
    payload across calls, so each prefix is a possible state)."""
    data = case.data
    step = max(1, len(data) // 3000)  # the 64 KiB cases: keep it quick
    points = sorted(set(range(0, len(data) + 1, step)) | set(range(0, min(len(data), 40) + 1))
                    | set(range(max(0, len(data) - 40), len(data) + 1))
                    | ({case.at - 1, case.at, case.at + 1} & set(range(len(data) + 1))
                       if case.at is not None else set()))
    prev = []
    failed_at = None
    for i in points:
        frames, consumed, error = run(data[:i], case.settings)
        if error is not None:
            assert error == case.error, "prefix %d raised %d; the whole raises %r" % (i, error, case.error)
            if failed_at is None:
                failed_at = i
            continue
        assert failed_at is None, "prefix %d parsed after prefix %d failed" % (i, failed_at)
        assert frames[:len(prev)] == prev, "prefix %d lost frames" % i
        assert frames == case.frames[:len(frames)], "prefix %d: frames not a prefix of the whole's" % i
        assert consumed <= i
        prev = frames
    if case.error is not None:
        assert failed_at is not None
        if case.at is not None:
            assert failed_at == case.at + 1, \
                "error found after %d bytes, expected at byte %d" % (failed_at, case.at + 1)
    else:
        assert prev == case.frames


@pytest.mark.parametrize("case", [c for c in CASES if len(c.data) < 300], ids=repr)
def test_split_everywhere(case):
    """Split in two at every position: the first part alone, then the whole.
    The first part never errs where the whole does not; the whole gives
    the case's result regardless of where the split was."""
    whole = run(case.data, case.settings)
    for i in range(len(case.data) + 1):
        first = run(case.data[:i], case.settings)
        if first[2] is not None:
            assert first[2] == case.error, "split at %d: the first part raised %d" % (i, first[2])
        else:
            assert first[0] == case.frames[:len(first[0])], "split at %d" % i
        assert run(case.data[:i] + case.data[i:], case.settings) == whole


@pytest.mark.parametrize("case", [c for c in CASES if len(c.data) < 300], ids=repr)
def test_fed_in_pieces(case):
    """The bytes fed in pieces (cuts=, as reads deliver them): cut once at
    every position, in threes, and byte by byte, the result is the whole's."""
    whole = run(case.data, case.settings)
    n = len(case.data)
    for cuts in [[i] for i in range(n + 1)] + [list(range(0, n, 3)), list(range(n))]:
        assert run(case.data, dict(case.settings, cuts=cuts)) == whole, cuts


def test_cuts_are_checked():
    data = frame(BINARY, b"abc")
    assert parse_ws_frames(data, cuts=(0, 0, 2, len(data))) == parse_ws_frames(data)
    for bad in ([3, 2], [len(data) + 1], [-1]):
        with pytest.raises(ValueError, match="ascending offsets"):
            parse_ws_frames(data, cuts=bad)
    with pytest.raises(TypeError):
        parse_ws_frames(data, cuts=5)


@pytest.mark.parametrize("kw, exc, text", [
    (dict(max_message=-1), ValueError, "max_message"),       # once: unlimited
    (dict(max_message=2**64), ValueError, "max_message"),    # once: 0
    (dict(max_message="16"), TypeError, "max_message"),
    (dict(rsv_allowed=-1), ValueError, "rsv_allowed"),       # once: every RSV bit
    (dict(rsv_allowed=0x80), ValueError, "rsv_allowed"),
])
def test_settings_out_of_range_are_refused(kw, exc, text):
    with pytest.raises(exc, match=text):
        parse_ws_frames(frame(TEXT, b"abc"), **kw)
    assert parse_ws_frames(frame(TEXT, b"abc"), max_message=2**64 - 1)[0] == [(1, 0, TEXT, b"abc")]


def test_inflate_max_size_out_of_range_is_refused():
    """A negative max_size once turned the compression-bomb cap off."""
    from yimmo.parsers import inflate_ws_message
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="max_size"):
            inflate_ws_message(b"\x03\x00", max_size=bad)


def test_error_is_parse_error():
    with pytest.raises(ParseError) as ei:
        parse_ws_frames(frame(TEXT, mask=None))
    e = ei.value
    assert isinstance(e, ValueError)
    assert e.args == ("unmasked client frame", 1002, "websocket", 1002)
    assert (e.reason, e.status, e.name, e.code) == e.args


def test_partial_frame_is_not_returned():
    data = frame(BINARY, b"abcdef")
    assert parse_ws_frames(data[:1]) == ([], 1)
    assert parse_ws_frames(data[:9]) == ([], 9)  # header gathered, payload partial
    assert parse_ws_frames(data) == ([(1, 0, BINARY, b"abcdef")], len(data))


def test_input_types_and_copy():
    data = frame(TEXT, b"masked")
    buf = bytearray(data)
    assert parse_ws_frames(buf)[0] == [(1, 0, TEXT, b"masked")]
    assert parse_ws_frames(memoryview(buf))[0] == [(1, 0, TEXT, b"masked")]
    assert buf == data  # unmasked on a copy, the caller's bytes stay as they were
    with pytest.raises(TypeError):
        parse_ws_frames("text")


def test_max_message_zero_allows_only_empty():
    assert parse_ws_frames(frame(TEXT), max_message=0)[0] == [(1, 0, TEXT, b"")]
    with pytest.raises(ParseError) as ei:
        parse_ws_frames(frame(TEXT, b"x"), max_message=0)
    assert ei.value.code == 1009


def test_random_valid_streams():
    """Seeded random streams of valid frames (random sizes, fragmentation,
    control frames in between, random masks) come back as sent."""
    rng = random.Random(6455)
    for _ in range(150):
        data, expect, in_msg = b"", [], False
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.2:
                op = rng.choice([PING, PONG])
                p = rng.randbytes(rng.randint(0, 125))
                fin = True
            else:
                op = CONT if in_msg else rng.choice([TEXT, BINARY])
                n = rng.choice([0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000]
                               if rng.random() < 0.3 else [rng.randint(0, 200)])
                if op == TEXT or (op == CONT and msg_op == TEXT):
                    p = "".join(rng.choice("aé€\U0001F600") for _ in range(n // 4)).encode()
                else:
                    p = rng.randbytes(n)
                fin = rng.random() < 0.6
                if op != CONT:
                    msg_op = op
                in_msg = not fin
            mask = rng.randbytes(4)
            data += frame(op, p, fin=fin, mask=mask)
            expect.append((int(fin), 0, op, p))
        if in_msg:  # a message can stay open at the end of the bytes
            data += frame(CONT, b"", mask=b"abcd")
            expect.append((1, 0, CONT, b""))
        frames, consumed = parse_ws_frames(data)
        assert [tuple(f) for f in frames] == expect
        assert consumed == len(data)
        cut = rng.randint(0, len(data))
        got = [tuple(f) for f in parse_ws_frames(data[:cut])[0]]
        assert got == expect[:len(got)]

"""Data-driven tests for the HTTP/1.x request parser (csrc/http/parser.c).

Cases live in tests/parser_cases/*.txt. A file holds any number of cases;
text before the first case is a comment. A case is:

    ### name of the case
    --- limits            (optional) JSON object of RequestParser keyword args
    {"max_headers": 2}
    --- input             the bytes fed to the parser
    POST / HTTP/1.1\\r\\n
    Content-Length: 5\\r\\n
    \\r\\n
    hello
    --- expect            (optional) JSON: one request object or a list of them
    {"method": "POST", "body": "hello"}
    --- error YMO_E_NAME  (optional) the error raised after the expected requests
    --- pending 12        (optional) bytes left over; default 0 when no error

Input rules: the file's own line breaks are ignored, so a request is written
one line per protocol line; bytes are given with the escapes \\r \\n \\t \\0
\\\\ and \\xHH. Everything else is taken literally (as latin-1).

Expected requests are partial: only the keys given are compared. Keys are the
fields of yimmo.parsers.ParsedRequest; "headers" is a list of [name, value]
strings and "body" a string, both mapped to bytes as latin-1. A case with
neither expected requests nor an error expects no complete request.

Every case is fed whole, byte by byte, split at every position into two feeds,
and at seeded random positions; all must give the same requests and error.
parse_http_request (default limits) must agree with the first request.
"""
import gc
import json
import os
import random
import re
import sys

import pytest

from yimmo.parsers import ParsedRequest, ParseError, RequestParser, parse_http_request, parse_request

CASE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parser_cases")
FIELDS = ParsedRequest._fields

_ESC = re.compile(rb"\\(r|n|t|0|\\|x[0-9a-fA-F]{2})")
_ESC_MAP = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}


def unescape(text):
    raw = "".join(text.splitlines()).encode("latin-1")

    def sub(m):
        g = m.group(1)
        return bytes([int(g[1:], 16)]) if g[:1] == b"x" else _ESC_MAP[g]

    return _ESC.sub(sub, raw)


class Case:
    def __init__(self, path, name):
        self.path = path
        self.name = name
        self.limits = {}
        self.data = None
        self.expect = []
        self.error = None
        self.pending = None

    @property
    def id(self):
        return "%s:%s" % (os.path.basename(self.path)[:-4], self.name)


def load_cases():
    cases = []
    for fn in sorted(os.listdir(CASE_DIR)):
        if not fn.endswith(".txt"):
            continue
        path = os.path.join(CASE_DIR, fn)
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        case, section, body = None, None, []

        def close_section():
            if case is None or section is None:
                return
            text = "\n".join(body)
            if section == "input":
                case.data = unescape(text)
            elif section == "expect":
                exp = json.loads(text)
                case.expect = exp if isinstance(exp, list) else [exp]
            elif section == "limits":
                case.limits = json.loads(text)
            elif section.startswith("error "):
                case.error = section.split()[1]
            elif section.startswith("pending "):
                case.pending = int(section.split()[1])
            else:
                raise ValueError("%s: unknown section %r" % (fn, section))

        for line in lines:
            if line.startswith("### "):
                close_section()
                case = Case(path, line[4:].strip())
                cases.append(case)
                section, body = None, []
            elif line.startswith("--- ") and case is not None:
                close_section()
                section, body = line[4:].strip(), []
            elif section is not None:
                body.append(line)
        close_section()
    for c in cases:
        assert c.data is not None, "case %s has no input" % c.id
    return cases


CASES = load_cases()


def run(case, chunks):
    """Feed chunks; return (requests, error name, pending or None)."""
    p = RequestParser(**case.limits)
    reqs, err = [], None
    for chunk in chunks:
        try:
            reqs += p.feed(chunk)
        except ParseError as e:
            err = e
            break
    if err is None:
        try:
            reqs += p.feed(b"")
        except ParseError as e:
            err = e
    if err is not None:
        # Errors are sticky.
        with pytest.raises(ParseError) as again:
            p.feed(b"GET / HTTP/1.1\r\n")
        assert again.value.args == err.args
        assert err.status == status_of(err.name)
        return reqs, err.name, None
    return reqs, None, p.pending


STATUS = {
    "YMO_E_REQUEST_LINE_TOO_LONG": 414,
    "YMO_E_METHOD_TOO_LONG": 501,
    "YMO_E_HEADER_FIELD_TOO_LARGE": 431,
    "YMO_E_HEADERS_TOO_LARGE": 431,
    "YMO_E_TOO_MANY_HEADERS": 431,
    "YMO_E_BODY_TOO_LARGE": 413,
    "YMO_E_UNKNOWN_TRANSFER_CODING": 501,
    "YMO_E_VERSION_UNSUPPORTED": 505,
}


def status_of(name):
    return STATUS.get(name, 400)


def as_expected(req):
    """A returned tuple in the JSON form the case files use."""
    d = dict(zip(FIELDS, req))
    d["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in d["headers"]]
    d["body"] = d["body"].decode("latin-1")
    return d


def check_expected(case, reqs, err, pending):
    assert err == case.error
    assert len(reqs) == len(case.expect), [as_expected(r) for r in reqs]
    for got, want in zip(reqs, case.expect):
        got = as_expected(got)
        unknown = set(want) - set(FIELDS)
        assert not unknown, "unknown keys %s" % unknown
        assert {k: got[k] for k in want} == want
    if err is None:
        want_pending = case.pending if case.pending is not None else 0
        assert pending == want_pending
        assert pending == len(case.data) - sum(r[7] for r in reqs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case):
    whole = run(case, [case.data])
    check_expected(case, *whole)

    if len(case.data) > 0:
        assert run(case, [case.data[i : i + 1] for i in range(len(case.data))]) == whole
    for cut in range(1, len(case.data)):
        assert run(case, [case.data[:cut], case.data[cut:]]) == whole, "split at %d" % cut

    if not case.limits:
        reqs, err, _ = whole
        if reqs:
            assert parse_http_request(case.data) == reqs[0]
            assert parse_http_request(bytearray(case.data)) == reqs[0]
        else:
            with pytest.raises(ParseError) as e:
                parse_http_request(case.data)
            assert e.value.name == (err or "YMO_AGAIN")


@pytest.mark.parametrize("seed", range(8))
def test_random_splits(seed):
    """Property: any split of any case (or of all cases glued) parses the same."""
    rng = random.Random(seed)
    for case in CASES:
        whole = run(case, [case.data])
        for _ in range(10):
            data = case.data
            cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(1, 6))))
            chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            assert run(case, chunks) == whole, (case.id, cuts)


def test_random_pipeline():
    """Valid cases without limits, concatenated, parse as the sum of their parts."""
    rng = random.Random(1234)
    good = [c for c in CASES if c.error is None and not c.limits and c.expect and not c.pending]
    assert len(good) > 20
    for _ in range(30):
        picked = rng.sample(good, 6)
        data = b"".join(c.data for c in picked)
        want = [r for c in picked for r in run(c, [c.data])[0]]
        cuts = sorted(rng.sample(range(len(data) + 1), 12))
        chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        p = RequestParser()
        got = []
        for ch in chunks:
            got += p.feed(ch)
        assert got == want
        assert p.pending == 0


def test_case_count():
    assert len(CASES) >= 60
    names = [c.id for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"


# ---- limits, precisely ----------------------------------------------------


def feed_error(data, **limits):
    p = RequestParser(**limits)
    with pytest.raises(ParseError) as e:
        p.feed(data)
    return e.value


def test_request_line_limit_before_crlf():
    # Detected as soon as the line passes the limit, long before CRLF.
    p = RequestParser(max_request_line=32)
    assert p.feed(b"GET /" + b"a" * 26) == []  # 31 bytes: still fine
    assert p.feed(b"a") == []  # 32 bytes: at the limit
    with pytest.raises(ParseError) as e:
        p.feed(b"a")
    assert (e.value.name, e.value.status) == ("YMO_E_REQUEST_LINE_TOO_LONG", 414)
    assert e.value.reason == "request line too long"


@pytest.mark.parametrize("n", [15, 16, 17])
def test_request_line_limit_exact(n):
    # "GET /" + path + " HTTP/1.1" is n bytes; the limit is 16.
    line = b"GET /" + b"x" * (n - 14) + b" HTTP/1.1"
    assert len(line) == n
    data = line + b"\r\nHost: a\r\n\r\n"
    p = RequestParser(max_request_line=16)
    if n <= 16:
        assert len(p.feed(data)) == 1
    else:
        with pytest.raises(ParseError) as e:
            p.feed(data)
        assert e.value.status == 414


def test_field_limit_before_crlf():
    p = RequestParser(max_field_size=20)
    p.feed(b"GET / HTTP/1.1\r\nX: " + b"v" * 17)  # 20 bytes of field line
    with pytest.raises(ParseError) as e:
        p.feed(b"v")
    assert (e.value.name, e.value.status) == ("YMO_E_HEADER_FIELD_TOO_LARGE", 431)


def test_field_limit_on_name():
    e = feed_error(b"GET / HTTP/1.1\r\n" + b"x" * 30, max_field_size=20)
    assert e.name == "YMO_E_HEADER_FIELD_TOO_LARGE"


def test_header_bytes_limit():
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert len(RequestParser(max_header_bytes=len(head)).feed(head)) == 1
    for n in range(1, len(head)):
        e = feed_error(head, max_header_bytes=n)
        assert (e.name, e.status) == ("YMO_E_HEADERS_TOO_LARGE", 431), n


def test_too_many_headers():
    head = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n"
    assert len(RequestParser(max_headers=3).feed(head)) == 1
    e = feed_error(head, max_headers=2)
    assert (e.name, e.status) == ("YMO_E_TOO_MANY_HEADERS", 431)
    e = feed_error(head, max_headers=0)
    assert e.name == "YMO_E_TOO_MANY_HEADERS"


def test_body_limit_content_length():
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
    (req,) = RequestParser(max_body=10).feed(head % 10 + b"0123456789")
    assert req[6] == b"0123456789"
    # Refused at head time, before any body byte arrives.
    e = feed_error(head % 11, max_body=10)
    assert (e.name, e.status) == ("YMO_E_BODY_TOO_LARGE", 413)


def test_body_limit_chunked_running_total():
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    p = RequestParser(max_body=10)
    assert p.feed(head + b"5\r\nhello\r\n5\r\nworld\r\n") == []
    with pytest.raises(ParseError) as e:
        p.feed(b"1\r\n")
    assert (e.value.name, e.value.status) == ("YMO_E_BODY_TOO_LARGE", 413)
    (req,) = RequestParser(max_body=10).feed(head + b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n")
    assert req[6] == b"helloworld"


def test_body_limit_zero():
    (req,) = RequestParser(max_body=0).feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert req[6] == b""


@pytest.mark.parametrize(
    "name,status",
    [
        ("YMO_E_BAD_METHOD", 400),
        ("YMO_E_VERSION_UNSUPPORTED", 505),
        ("YMO_E_UNKNOWN_TRANSFER_CODING", 501),
    ],
)
def test_statuses(name, status):
    data = {
        "YMO_E_BAD_METHOD": b"G(T / HTTP/1.1\r\n",
        "YMO_E_VERSION_UNSUPPORTED": b"GET / HTTP/2.0\r\n",
        "YMO_E_UNKNOWN_TRANSFER_CODING": b"POST / HTTP/1.1\r\nHost: a\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n",
    }[name]
    e = feed_error(data)
    assert (e.name, e.status) == (name, status)
    assert e.args == (e.reason, e.status, e.name, e.code)
    assert isinstance(e, ValueError)
    assert e.code < 0 and isinstance(e.reason, str) and e.reason


# ---- the Python surface ---------------------------------------------------


def test_parse_request_namedtuple():
    r = parse_request(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(r, ParsedRequest)
    assert (r.method, r.path, r.query, r.version, r.keep_alive) == ("GET", "/a", "b=c", "HTTP/1.1", True)
    assert r.consumed == 32


def test_parse_http_request_incomplete():
    for data in (b"", b"GET / HTTP/1.1\r\nHost: a\r\n", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab"):
        with pytest.raises(ParseError) as e:
            parse_http_request(data)
        assert e.value.name == "YMO_AGAIN"
        assert e.value.reason == "incomplete request"


def test_parse_http_request_does_not_modify_input():
    data = bytearray(b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n")
    before = bytes(data)
    assert parse_http_request(data)[5] == [(b"host", b"a")]
    assert parse_http_request(memoryview(data))[5] == [(b"host", b"a")]
    assert bytes(data) == before


def test_feed_types():
    p = RequestParser()
    assert p.feed(memoryview(b"GET / HTTP/1.0\r\n")) == []
    assert p.pending == 16
    assert len(p.feed(bytearray(b"\r\n"))) == 1
    assert p.pending == 0
    with pytest.raises(TypeError):
        p.feed("GET")
    with pytest.raises(TypeError):
        p.feed()
    with pytest.raises(TypeError):
        parse_http_request("GET / HTTP/1.0\r\n\r\n")


def test_error_after_good_requests_is_deferred():
    p = RequestParser()
    reqs = p.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nBAD\x01")
    assert [r[1] for r in reqs] == ["/1"]
    with pytest.raises(ParseError) as e:
        p.feed(b"")
    assert e.value.name == "YMO_E_BAD_METHOD"


def test_constructor_validation():
    for kw in ({"max_headers": -1}, {"max_body": -5}, {"max_request_line": 2**32}, {"max_headers": 10**6}):
        with pytest.raises(ValueError):
            RequestParser(**kw)
    with pytest.raises(TypeError):
        RequestParser(16)  # keyword-only
    with pytest.raises(TypeError):
        RequestParser(max_body="1")
    with pytest.raises(TypeError):
        RequestParser(bogus=1)
    RequestParser(max_body=2**64 - 1, max_header_bytes=2**32 - 1)


def test_type_is_immutable():
    with pytest.raises(TypeError):
        RequestParser.feed = None


def test_no_refcount_leak():
    data = b"POST /x?y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" * 3
    for _ in range(100):
        RequestParser().feed(data)
    gc.collect()
    before = sys.getrefcount(RequestParser)
    for _ in range(1000):
        p = RequestParser()
        p.feed(data)
        parse_http_request(data)
        try:
            p.feed(b"\x01")
        except ParseError:
            pass
        del p
    gc.collect()
    assert sys.getrefcount(RequestParser) - before <= 1

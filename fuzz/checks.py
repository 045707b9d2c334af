"""Invariant checks shared by the fuzz harnesses and the pytest replay.

Every harness in this folder is a thin atheris wrapper around one ``check_*``
function here, and tests/test_fuzz_regressions.py calls the same functions on
the seed corpora and the regression inputs with the normal build, so nothing
here needs atheris. A broken invariant raises :class:`Finding` (an
``AssertionError``) whose message says which one.

The checks hold the parser to a small reference written in Python from the
RFC text (RFC 9112 for framing, RFC 9110 for fields), independent of the C
code: for every request the parser accepts, the head is re-split by hand and
the body re-derived from its framing (Content-Length or decoded chunks), and
the bytes consumed must be exactly the head plus that framing.
"""
import re
import struct

from yimmo.parsers import ParseError, RequestParser, parse_http_request

__all__ = [
    "Finding",
    "Outcome",
    "run_parser",
    "check_request",
    "check_chunked",
    "check_split",
    "decode_split_input",
    "ref_dechunk",
    "CHUNKED_HEAD",
]

# What fuzz inputs may reach; the defaults of yimmo/parsers.py.
MAX_BODY = 100 * 1024 * 1024
MAX_HEADER_BYTES = 65536
MAX_CHUNK_LINE = 4096  # csrc/http/parser.c: size line, extensions and CR

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 5.6.2
_TOKEN_RE = re.compile(TOKEN)
# RFC 9110 5.6.4 quoted-string; qdtext and quoted-pair.
_QS = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
_EXT = rb"(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + _QS + rb"))?)*"
_SIZE_LINE_RE = re.compile(rb"([0-9A-Fa-f]+)(" + _EXT + rb")\r\n")
# RFC 9112 7.1.2 / RFC 9110 5.5: trailer-field = field-name ":" field-value.
_TRAILER_RE = re.compile(TOKEN + rb":[\t \x21-\x7e\x80-\xff]*\r\n")
# RFC 9110 5.5: a field value never holds CTLs but HTAB (obs-text is allowed).
_VALUE_RE = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")

# The head every http_chunked input is appended to.
CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


class Finding(AssertionError):
    """A broken invariant: a bug in the parser (or in this reference)."""


def expect(cond, what, *detail):
    if not cond:
        raise Finding(what + ("" if not detail else ": " + " ".join(repr(d) for d in detail)))


# ---- the parser, run one way ------------------------------------------------


class Outcome(tuple):
    """(requests, error, pending): error is (name, status, reason) or None;
    pending is None after an error (what was buffered depends on when feeding
    stopped)."""

    __slots__ = ()

    def __new__(cls, requests, error, pending):
        return tuple.__new__(cls, (requests, error, pending))

    requests = property(lambda self: self[0])
    error = property(lambda self: self[1])
    pending = property(lambda self: self[2])


def run_parser(chunks, limits=None):
    """Feed chunks to a new RequestParser; return an :class:`Outcome`.

    Checks along the way: pending accounting after every feed, and that an
    error is sticky (the next feed raises the same one, whatever it is given).
    """
    p = RequestParser(**(limits or {}))
    reqs, err, fed = [], None, 0
    for chunk in list(chunks) + [b""]:
        try:
            got = p.feed(chunk)
        except ParseError as e:
            err = e
            break
        fed += len(chunk)
        reqs += got
        expect(p.pending == fed - sum(r[7] for r in reqs),
               "pending != fed - consumed", p.pending, fed, [r[7] for r in reqs])
        expect(p.pending >= 0, "negative pending")
    if err is None:
        return Outcome(reqs, None, p.pending)
    expect(len(err.args) == 4 and err.args[0] == err.reason and err.args[1] == err.status,
           "ParseError args", err.args)
    expect(err.status in (400, 413, 414, 431, 501, 505), "status", err.args)
    expect(err.name.startswith("YMO_E_"), "error name", err.args)
    for again in (b"", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"):
        try:
            p.feed(again)
        except ParseError as e2:
            expect(e2.args == err.args, "error not sticky", err.args, e2.args)
        else:
            raise Finding("feed() after an error did not raise %r" % (err.args,))
    return Outcome(reqs, (err.name, err.status, err.reason), None)


# ---- the reference ----------------------------------------------------------


def ref_dechunk(buf, total=0, max_body=MAX_BODY, max_trailer=MAX_HEADER_BYTES):
    """Decode a chunked body at the start of buf, strictly (RFC 9112 7.1).

    Returns (body, end) when buf holds a complete, valid chunked body with
    its trailer section (end: bytes it uses), or None when it does not
    (invalid, or incomplete). The size cap is yimmo's: the declared size of
    a chunk may not take the decoded total past max_body.
    """
    pos, out = 0, []
    while True:
        m = _SIZE_LINE_RE.match(buf, pos)
        if m is None:
            return None
        if m.end() - 1 - pos > MAX_CHUNK_LINE:  # the line and its CR, not the LF
            return None
        size = int(m.group(1), 16)
        if size > max_body - total:
            return None
        pos = m.end()
        if size == 0:
            break
        if pos + size + 2 > len(buf) or buf[pos + size:pos + size + 2] != b"\r\n":
            return None
        out.append(buf[pos:pos + size])
        total += size
        pos += size + 2
    start = pos
    while True:
        if buf[pos:pos + 2] == b"\r\n":
            pos += 2
            break
        m = _TRAILER_RE.match(buf, pos)
        if m is None:
            return None
        pos = m.end()
    if pos - start > max_trailer:
        return None
    return b"".join(out), pos


def _conn_tokens(headers):
    toks = set()
    for n, v in headers:
        if n == b"connection":
            toks.update(t.strip(b" \t").lower() for t in v.split(b","))
    return toks


def _split_target(method, target):
    """(path, query) as yimmo.parsers documents them."""
    if method == b"CONNECT":
        return target, b""
    if target == b"*":
        return b"*", b""
    if target.startswith(b"/"):
        path, q, query = target.partition(b"?")
        return path, query
    # absolute-form: scheme "://" authority [path] ["?" query]
    expect(b"://" in target, "target form accepted", target)
    rest = target.split(b"://", 1)[1]
    cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0] or [len(rest)])
    tail = rest[cut:]
    path, q, query = tail.partition(b"?")
    return (path or b"/"), query


def check_accepted(data, req, limits=None):
    """data[0:req.consumed] is one request the parser accepted: re-derive it.

    Returns the request's consumed length.
    """
    (method, target, path, query, version, headers, body, consumed,
     keep_alive, chunked, expect_continue, upgrade) = req
    limits = limits or {}
    max_body = limits.get("max_body", MAX_BODY)
    expect(0 < consumed <= len(data), "consumed out of range", consumed, len(data))
    raw = bytes(data[:consumed])

    # RFC 9112 2.2: a few empty lines may precede the request line.
    lead = 0
    while raw[lead:lead + 2] == b"\r\n":
        lead += 2
    expect(lead <= 8, "more than 4 empty lines accepted", lead)
    head_end = raw.find(b"\r\n\r\n", lead)
    expect(head_end >= 0, "accepted request has no empty line", raw)
    head_end += 4
    lines = raw[lead:head_end - 4].split(b"\r\n")
    for ln in lines:
        expect(b"\n" not in ln and b"\r" not in ln, "bare CR/LF accepted in head", ln)

    # RFC 9112 3: request-line = method SP request-target SP HTTP-version
    rl = lines[0].split(b" ")
    expect(len(rl) == 3, "request line is not 3 fields", lines[0])
    expect(_TOKEN_RE.fullmatch(rl[0]) is not None, "method is not a token", rl[0])
    expect(method.encode("latin-1") == rl[0], "method", method, rl[0])
    expect(target.encode("latin-1") == rl[1], "target", target, rl[1])
    m = re.fullmatch(rb"HTTP/(\d)\.(\d)", rl[2])
    expect(m is not None and m.group(1) == b"1", "version accepted", rl[2])
    v11 = m.group(2) != b"0"
    expect(version == ("HTTP/1.1" if v11 else "HTTP/1.0"), "version", version, rl[2])
    expect(all(0x21 <= c <= 0x7e and c != 0x23 for c in rl[1]), "bad byte in target", rl[1])
    rpath, rquery = _split_target(rl[0], rl[1])
    expect(path.encode("latin-1") == rpath, "path", path, rpath, rl[1])
    expect(query.encode("latin-1") == rquery, "query", query, rquery, rl[1])

    # RFC 9112 5 / RFC 9110 5.5: field-name ":" OWS field-value OWS
    ref_headers = []
    for ln in lines[1:]:
        name, colon, value = ln.partition(b":")
        expect(colon == b":", "field line without colon", ln)
        expect(_TOKEN_RE.fullmatch(name) is not None, "field name is not a token", ln)
        value = value.strip(b" \t")
        expect(_VALUE_RE.fullmatch(value) is not None, "bad byte in field value", ln)
        ref_headers.append((name.lower(), value))
    expect(headers == ref_headers, "headers", headers, ref_headers)
    expect(len(headers) <= limits.get("max_headers", 100), "too many headers accepted")

    names = [n for n, _ in headers]
    # RFC 9112 3.2: exactly one Host in 1.1, at most one in 1.0.
    hosts = names.count(b"host")
    expect(hosts <= 1 and (hosts == 1 or not v11), "Host count", hosts, version)
    te = [v for n, v in headers if n == b"transfer-encoding"]
    cl = [v for n, v in headers if n == b"content-length"]
    # RFC 9112 6.1, 6.3: never both framings, no TE in 1.0, at most one CL.
    expect(not (te and cl), "Content-Length with Transfer-Encoding accepted")
    expect(not (te and not v11), "Transfer-Encoding in HTTP/1.0 accepted")
    expect(len(cl) <= 1, "several Content-Length accepted", cl)
    expect(chunked == bool(te), "chunked flag", chunked, te)

    framing = raw[head_end:]
    if te:
        codings = [c.strip(b" \t").lower() for v in te for c in v.split(b",")]
        codings = [c for c in codings if c]
        expect(codings == [b"chunked"], "transfer codings accepted", codings)
        dec = ref_dechunk(framing, max_body=max_body,
                          max_trailer=limits.get("max_header_bytes", MAX_HEADER_BYTES))
        expect(dec is not None, "accepted a chunked body the reference refuses", framing)
        expect(dec[1] == len(framing), "chunked body ends elsewhere", dec[1], len(framing))
        expect(dec[0] == body, "chunked body differs", body, dec[0])
    elif cl:
        expect(re.fullmatch(rb"[0-9]+", cl[0]) is not None, "Content-Length accepted", cl[0])
        n = int(cl[0])
        expect(n <= max_body, "Content-Length over max_body accepted", n)
        expect(len(framing) == n, "consumed != head + Content-Length", len(framing), n)
        expect(body == framing, "body differs from the Content-Length bytes")
    else:
        # RFC 9112 6.3: neither framing: no content.
        expect(framing == b"" and body == b"", "body without framing", framing, body)

    conn = _conn_tokens(headers)
    expect(keep_alive == (b"close" not in conn and (v11 or b"keep-alive" in conn)),
           "keep_alive", keep_alive, conn, version)
    expect(expect_continue == (v11 and any(n == b"expect" and v.lower() == b"100-continue"
                                           for n, v in headers)),
           "expect_continue", expect_continue)
    expect(upgrade == (v11 and b"upgrade" in conn and b"upgrade" in names), "upgrade", upgrade)
    return consumed


def check_outcome(data, out, limits=None):
    """Check every request of an Outcome against the reference, in sequence."""
    off = 0
    for req in out.requests:
        off += check_accepted(data[off:], req, limits)
    if out.error is None:
        expect(off + out.pending == len(data), "consumed + pending != input")
    return off


# ---- harness entry points -----------------------------------------------------


def check_request(data):
    """http_request: the whole input, both entry points, default limits."""
    out = run_parser([data])
    check_outcome(data, out)
    try:
        first = parse_http_request(data)
    except ParseError as e:
        if out.requests:
            raise Finding("parse_http_request refused what feed() accepted: %r" % (e.args,))
        want = out.error[0] if out.error else "YMO_AGAIN"
        expect(e.name == want, "parse_http_request error", e.name, want)
    else:
        expect(out.requests and first == out.requests[0],
               "parse_http_request != feed()[0]", first, out.requests[:1])
    return out


def check_chunked(body):
    """http_chunked: CHUNKED_HEAD + body; yimmo accepts iff the reference does."""
    data = CHUNKED_HEAD + body
    out = run_parser([data])
    check_outcome(data, out)
    ref = ref_dechunk(body)
    if out.requests:
        return out  # check_accepted compared it with the reference already
    expect(ref is None, "refused a valid chunked body", out.error, ref)
    return out


# Limits the split harness picks from: small ones reach every limit branch.
_LIMIT_CHOICES = {
    "max_request_line": (8192, 12, 20, 33),
    "max_field_size": (8192, 8, 16, 40),
    "max_header_bytes": (65536, 24, 48, 100),
    "max_headers": (100, 0, 1, 3),
    "max_body": (MAX_BODY, 0, 5, 64),
}


def decode_split_input(raw):
    """Split a fuzz input into (limits, chunks).

    Layout: byte 0 picks the limits (2 bits each for the first four, and
    bit 0 of byte 1 with 1 more for max_body), byte 1 >> 2 is the number of
    cuts (0-63), then 2 bytes per cut (big-endian offsets, taken modulo the
    payload's length + 1), then the payload.
    """
    if len(raw) < 2:
        return {}, [bytes(raw)]
    sel = raw[0] | (raw[1] & 3) << 8
    limits = {}
    for k, (name, choices) in enumerate(_LIMIT_CHOICES.items()):
        pick = (sel >> (2 * k)) & 3
        if pick:
            limits[name] = choices[pick]
    ncuts = raw[1] >> 2
    cut_bytes = raw[2:2 + 2 * ncuts]
    payload = bytes(raw[2 + 2 * ncuts:])
    cuts = sorted({v % (len(payload) + 1)
                   for (v,) in struct.iter_unpack(">H", cut_bytes[:len(cut_bytes) & ~1])})
    edges = [0] + cuts + [len(payload)]
    return limits, [payload[a:b] for a, b in zip(edges, edges[1:])]


def check_split(raw):
    """http_split: the payload whole and cut at chosen points give one result."""
    limits, chunks = decode_split_input(raw)
    payload = b"".join(chunks)
    whole = run_parser([payload], limits)
    check_outcome(payload, whole, limits)
    split = run_parser(chunks, limits)
    expect(split == whole, "split changes the result",
           [len(c) for c in chunks], limits, whole, split)
    if len(payload) <= 64:
        bytewise = run_parser([payload[i:i + 1] for i in range(len(payload))], limits)
        expect(bytewise == whole, "byte-by-byte changes the result", limits, whole, bytewise)
    return whole


# ---- differential against h11 -------------------------------------------------
#
# h11 (pip) is an independent HTTP/1.1 implementation. Where both parsers
# accept a request they must agree on method, target, version, fields and,
# above all, on where the request ends and what its body is: a disagreement
# on framing is what request smuggling is made of. Where only one accepts,
# nothing is asserted; the intentional differences (each with its RFC reason)
# are listed in H11_DIFFERENCES and in fuzz/README.md.

H11_DIFFERENCES = {
    "bare LF": "h11 accepts LF without CR as a line end; RFC 9112 2.2 lets a server "
               "refuse it, and a proxy that splits lines differently is a smuggling vector",
    "obs-fold": "h11 unfolds obs-fold; RFC 9112 5.2 lets a server refuse it with 400",
    "empty lines": "h11 skips at most one CRLF before a request, yimmo up to 4 "
                   "(RFC 9112 2.2: SHOULD ignore at least one)",
    "HTTP/2.0 on the wire": "h11 accepts any 1-digit major version; RFC 9110 6.2 / 15.6.6: "
                            "yimmo answers other majors 505",
    "Content-Length lists": "h11 accepts '5, 5' and repeated equal Content-Length "
                            "(RFC 9110 8.6 allows it); yimmo refuses any list because a "
                            "proxy in front may have used another member",
    "Transfer-Encoding lists": "h11 takes exactly one TE field valued 'chunked'; yimmo "
                               "accepts the list forms RFC 9110 5.6.1 allows (empty "
                               "elements, several fields) as long as chunked is the only "
                               "coding",
    "chunk-size digits": "h11 allows at most 20 hex digits; yimmo any number of leading "
                         "zeros within its 4096-byte size line",
    "chunk extensions": "h11 accepts anything after ';' up to CRLF; yimmo checks the "
                        "RFC 9112 7.1.1 grammar",
    "HTTP/1.0 keep-alive": "h11 never keeps a 1.0 connection open; yimmo honours "
                           "'Connection: keep-alive' (RFC 9112 C.2.2). Compared up to "
                           "the first request h11 closes after",
    "field and target bytes": "each refuses a few bytes the other takes (h11 is lax on "
                              "'#' in the target, yimmo on nothing it has to be); "
                              "one-sided refusals are not compared",
}


def h11_requests(data, max_requests=8):
    """Run h11 as a server over data; return (requests, stop).

    Each request is (method, target, version, headers, body, end) with end the
    offset in data just after it; stop is "error: ..." or "need_data" or
    "closed" (h11 would close after the last one) or "paused" or "limit".
    """
    import h11

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(bytes(data))
    reqs, cur, body = [], None, []
    try:
        while len(reqs) < max_requests:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                return reqs, "need_data"
            if ev is h11.PAUSED:
                return reqs, "paused"
            if isinstance(ev, h11.Request):
                cur, body = ev, []
            elif isinstance(ev, h11.Data):
                body.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                end = len(data) - len(conn.trailing_data[0])
                reqs.append((cur.method, cur.target, cur.http_version,
                             [(n, v) for n, v in cur.headers], b"".join(body), end))
                if conn.their_state is not h11.DONE:
                    return reqs, "paused"
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return reqs, "closed"
                conn.start_next_cycle()
            else:
                return reqs, "closed"
    except h11.RemoteProtocolError as e:
        return reqs, "error: %s" % e
    return reqs, "limit"


def _norm_h11_headers(headers):
    # h11 lowercases the value of Transfer-Encoding; everything else is as sent.
    return [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in headers]


def check_h11(data):
    """http_h11_diff: compare yimmo with h11 where both accept."""
    out = run_parser([data])
    check_outcome(data, out)
    theirs, stop = h11_requests(data)
    ours, off = [], 0
    for r in out.requests:
        off += r[7]
        ours.append((r, off))
    n = min(len(ours), len(theirs))
    for k in range(n):
        (r, end), (m, t, v, hs, body, tend) = ours[k], theirs[k]
        where = "request %d" % k
        expect(r[0].encode("latin-1") == m, where + ": method", r[0], m)
        expect(r[1].encode("latin-1") == t, where + ": target", r[1], t)
        expect(r[4] == ("HTTP/1.0" if v == b"1.0" else "HTTP/1.1"), where + ": version", r[4], v)
        expect(_norm_h11_headers(r[5]) == _norm_h11_headers(hs), where + ": headers", r[5], hs)
        # The smuggling checks: same end, same body.
        expect(end == tend, where + ": request ends at %d for yimmo, %d for h11" % (end, tend))
        expect(r[6] == body, where + ": body", r[6], body)
    # One finished a request the other is still reading: they frame it apart.
    if len(ours) > n and stop == "need_data":
        raise Finding("request %d: yimmo ends it at %d, h11 wants more bytes" % (n, ours[n][1]))
    if len(theirs) > n and out.error is None:
        raise Finding("request %d: h11 ends it at %d, yimmo wants more bytes" % (n, theirs[n][5]))
    return out, theirs, stop

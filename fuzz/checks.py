"""Invariant checks shared by the fuzz harnesses and the pytest replay.

Every harness in this folder is a thin atheris wrapper around one ``check_*``
function here, and tests/test_fuzz_regressions.py calls the same functions on
the seed corpora and the regression inputs with the normal build, so nothing
here needs atheris. A broken invariant raises :class:`Finding` (an
``AssertionError``) whose message says which one.

The WebSocket checks (the end of this file) do the same for the frame codec
(RFC 6455 5, a reference frame parser), the UTF-8 validator (Python's strict
decoder) and permessage-deflate inflation (RFC 7692 7.2.2, Python's zlib).

The checks hold the parser to a small reference written in Python from the
RFC text (RFC 9112 for framing, RFC 9110 for fields), independent of the C
code: for every request the parser accepts, the head is re-split by hand and
the body re-derived from its framing (Content-Length or decoded chunks), and
the bytes consumed must be exactly the head plus that framing.
"""
import codecs
import re
import struct
import zlib

from yimmo.parsers import (ParseError, RequestParser, inflate_ws_message, parse_http_request,
                           parse_ws_frames)

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
    "check_ws_frames",
    "check_ws_utf8",
    "check_ws_inflate",
    "ref_ws_frames",
    "Utf8Ref",
    "ref_inflate",
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


def _list_tokens(headers, name):
    """The elements of every `name` field, as one list (RFC 9110 5.6.1)."""
    toks = set()
    for n, v in headers:
        if n == name:
            toks.update(t.strip(b" \t").lower() for t in v.split(b","))
    return toks


def _conn_tokens(headers):
    return _list_tokens(headers, b"connection")


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
    # RFC 9110 10.1.1: Expect is a list; 100-continue among its elements.
    expect(expect_continue == (v11 and b"100-continue" in _list_tokens(headers, b"expect")),
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


# ---- WebSocket (RFC 6455, RFC 7692) -------------------------------------------
#
# The entry points: parse_ws_frames(data, *, max_message, require_mask,
# rsv_allowed) -> (frames, consumed) and inflate_ws_message(data, *, max_size,
# no_context_takeover) -> bytes, both raising ParseError(reason, close_code,
# "websocket", close_code).

WS_CODES = (1002, 1007, 1009)
WS_MAX = 16 << 20  # the default max_message / max_size
WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_OPCODES = (WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG)
DEFLATE_TAIL = b"\x00\x00\xff\xff"


def ws_unmask(payload, mask):
    """payload XOR the 4-byte mask key (from the key's first byte); mask None: as is."""
    n = len(payload)
    if not mask or not n:
        return bytes(payload)
    key = (bytes(mask) * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def ws_frame(opcode, payload=b"", fin=True, rsv=0, mask=b"\x37\xfa\x21\x3d"):
    """One frame with the minimal length encoding (RFC 6455 5.2); rsv is the
    three bits as a number (4 = RSV1); mask None: unmasked."""
    n = len(payload)
    m = 0x80 if mask else 0
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    if n < 126:
        head += bytes([n | m])
    elif n < 65536:
        head += bytes([126 | m]) + struct.pack("!H", n)
    else:
        head += bytes([127 | m]) + struct.pack("!Q", n)
    if mask:
        return head + bytes(mask) + ws_unmask(payload, mask)
    return head + bytes(payload)


def ws_headers(data):
    """Walk the frame headers in data by their lengths alone (no rule
    checked): yield (start, header_size, payload_len, mask or None) for each
    complete header."""
    pos = 0
    while len(data) - pos >= 2:
        b1 = data[pos + 1]
        n = b1 & 0x7F
        h = 2 + {126: 2, 127: 8}.get(n, 0) + (4 if b1 & 0x80 else 0)
        if len(data) - pos < h:
            return
        if n == 126:
            n = int.from_bytes(data[pos + 2:pos + 4], "big")
        elif n == 127:
            n = int.from_bytes(data[pos + 2:pos + 10], "big")
        mask = bytes(data[pos + h - 4:pos + h]) if b1 & 0x80 else None
        yield pos, h, n, mask
        pos += h + n


def ws_apply_masks(data):
    """XOR every payload in data with its frame's mask key: turns a stream of
    plain payloads into what a client sends (and back)."""
    out = bytearray(data)
    for pos, h, n, mask in ws_headers(data):
        start = pos + h
        if mask and start < len(out):
            end = min(len(out), start + n)
            out[start:end] = ws_unmask(out[start:end], mask)
    return bytes(out)


class Utf8Ref:
    """Incremental UTF-8 validation by Python's strict decoder (RFC 3629:
    surrogates, overlongs and code points past U+10FFFF refused), reporting
    the first byte that cannot be part of valid text (RFC 6455 8.1).

    CPython's incremental decoder fails on the first impossible byte, with one
    exception kept for its surrogatepass handler: ED followed by A0..BF at the
    end of the input so far is held back as incomplete, though no byte can
    make it valid. That one is flagged here.
    """

    def __init__(self):
        self.dec = codecs.getincrementaldecoder("utf-8")("strict")

    def _held_surrogate(self):
        held = self.dec.getstate()[0]
        return len(held) == 2 and held[0] == 0xED and held[1] >= 0xA0

    def feed(self, chunk):
        """None, or the index in chunk of the first invalid byte."""
        chunk = bytes(chunk)
        state = self.dec.getstate()
        try:
            self.dec.decode(chunk)
        except UnicodeDecodeError as e:
            self.dec.setstate(state)
            # Everything before the bad sequence's start decodes; the bad
            # byte is within the next four (or among the held-back ones).
            k = max(0, e.start - len(state[0]))
            self.dec.decode(chunk[:k])
            for i in range(k, len(chunk)):
                try:
                    self.dec.decode(chunk[i:i + 1])
                except UnicodeDecodeError:
                    return i
                if self._held_surrogate():
                    return i
            raise Finding("Utf8Ref: the decoder refused %r but no byte of it" % (chunk,))
        if chunk and self._held_surrogate():
            return len(chunk) - 1
        return None

    def finish(self):
        """True when the text so far ends between characters."""
        try:
            self.dec.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
        return True


def ref_ws_frames(data, max_message=WS_MAX, require_mask=True, rsv_allowed=0):
    """The frame parser, from RFC 6455 5 / 8.1 and RFC 7692 6, in Python.

    Returns (frames, masks, error): the complete frames as (fin, rsv, opcode,
    payload), their mask keys, and error None or (close_code, at) with `at`
    the length of the shortest prefix of data that is refused (the yimmo
    parser checks a header when it is complete, UTF-8 on every byte, and a
    text message's last character when its last frame ends). Rules are
    checked in this order: length encoding, opcode, mask, RSV bits, control
    frame rules, fragmentation, then the size cap.
    """
    rsv_allowed &= 0x70
    frames, masks = [], []
    in_msg, utf8, msg_len = False, None, 0
    for pos, h, n, mask in ws_headers(data):
        b0, b1 = data[pos], data[pos + 1]
        at = pos + h

        def err(code):
            return frames, masks, (code, at)

        if b1 & 0x7F == 126 and n < 126:
            return err(1002)
        if b1 & 0x7F == 127 and (n >> 63 or n < 65536):
            return err(1002)
        fin, rsv, op = b0 >> 7, b0 & 0x70, b0 & 0x0F
        control = bool(op & 8)
        if op not in WS_OPCODES:
            return err(1002)
        if require_mask and mask is None:
            return err(1002)
        if rsv & ~rsv_allowed:
            return err(1002)
        if rsv and (control or op == WS_CONT):
            return err(1002)
        if control:
            if n > 125 or not fin:
                return err(1002)
        elif op == WS_CONT:
            if not in_msg:
                return err(1002)
        else:
            if in_msg:
                return err(1002)
            in_msg, msg_len = True, 0
            utf8 = Utf8Ref() if op == WS_TEXT and not rsv & 0x40 else None
        if not control and msg_len + n > max_message:
            return err(1009)
        avail = min(n, len(data) - at)
        payload = ws_unmask(data[at:at + avail], mask)
        if not control:
            msg_len += avail
            if utf8 is not None:
                bad = utf8.feed(payload)
                if bad is not None:
                    return frames, masks, (1007, at + bad + 1)
        if avail < n:
            break
        if not control and fin:
            if utf8 is not None and not utf8.finish():
                return frames, masks, (1007, at + n)
            in_msg, utf8 = False, None
        frames.append((fin, rsv >> 4, op, payload))
        masks.append(mask)
    return frames, masks, None


def run_ws(data, **settings):
    """parse_ws_frames -> (frames as tuples, consumed, None) or (None, None, code)."""
    try:
        frames, consumed = parse_ws_frames(data, **settings)
    except ParseError as e:
        expect(len(e.args) == 4 and isinstance(e.args[0], str) and e.args[2] == "websocket"
               and e.args[1] == e.args[3] == e.status == e.code, "ws ParseError args", e.args)
        expect(e.code in WS_CODES, "ws close code", e.args)
        return None, None, e.code
    expect(isinstance(frames, list) and isinstance(consumed, int), "ws result types", frames)
    frames = [tuple(f) for f in frames]
    for f in frames:
        expect(len(f) == 4 and type(f[3]) is bytes, "ws frame shape", f)
    return frames, consumed, None


_WS_MAX_CHOICES = (WS_MAX, 0, 1, 10, 125, 126, 65535, (1 << 64) - 1)
_WS_RSV_CHOICES = (0, 0x40, 0x70, 0x20)


def decode_ws_frames_input(raw):
    """ws_frames input: one settings byte, then the stream.

    bit 0: require_mask=False; bits 1-2: rsv_allowed (0, 0x40, 0x70, 0x20);
    bits 3-5: max_message (16 MiB, 0, 1, 10, 125, 126, 65535, 2**64-1);
    bit 6: the stream's payloads are plain, the harness masks them
    (ws_apply_masks) so the fuzzer need not.
    """
    if not raw:
        return {}, b""
    b = raw[0]
    settings = {}
    if b & 1:
        settings["require_mask"] = False
    if (b >> 1) & 3:
        settings["rsv_allowed"] = _WS_RSV_CHOICES[(b >> 1) & 3]
    if (b >> 3) & 7:
        settings["max_message"] = _WS_MAX_CHOICES[(b >> 3) & 7]
    data = bytes(raw[1:])
    if b & 0x40:
        data = ws_apply_masks(data)
    return settings, data


def encode_ws_frames_input(data, premask=False, require_mask=True, rsv_allowed=0,
                           max_message=WS_MAX):
    """The inverse of decode_ws_frames_input (for seeds); None if a setting
    has no encoding."""
    if rsv_allowed not in _WS_RSV_CHOICES or max_message not in _WS_MAX_CHOICES:
        return None
    b = (0 if require_mask else 1) | _WS_RSV_CHOICES.index(rsv_allowed) << 1
    b |= _WS_MAX_CHOICES.index(max_message) << 3
    if premask:
        b |= 0x40
        data = ws_apply_masks(data)
    return bytes([b]) + data


def check_ws_stream(data, settings):
    """parse_ws_frames on data against ref_ws_frames, its prefixes, and the
    frames re-serialized."""
    frames, masks, ref_err = ref_ws_frames(data, **settings)
    got, consumed, code = run_ws(data, **settings)
    if ref_err is None:
        expect(code is None, "ws: refused (%r) what the reference accepts" % (code,), frames)
        expect(got == frames, "ws: frames differ from the reference", got, frames)
        # Every byte is read: a partial header or payload at the end too.
        expect(consumed == len(data), "ws: consumed", consumed, len(data))
    else:
        ref_code, at = ref_err
        expect(code == ref_code, "ws: close code %r, the reference says %r at %d"
               % (code, ref_code, at), data[:at])
        # The shortest refused prefix is the reference's: the frames before
        # the bad one come back from data[:at - 1], data[:at] is refused.
        before, c_before, code_before = run_ws(data[:at - 1], **settings)
        expect(code_before is None, "ws: data[:%d] refused (%r), the error is at byte %d"
               % (at - 1, code_before, at))
        expect(before == frames, "ws: frames before the error", before, frames)
        expect(c_before == at - 1, "ws: consumed before the error", c_before, at - 1)
        expect(run_ws(data[:at], **settings)[2] == ref_code,
               "ws: data[:%d] not refused with %d" % (at, ref_code))
    # Invariants on what came back, whatever the reference says.
    end = 0
    allowed = settings.get("rsv_allowed", 0) & 0x70
    in_msg = False
    for (fin, rsv, op, payload), mask in zip(frames, masks):
        expect(op in WS_OPCODES, "ws: opcode", op)
        expect(fin in (0, 1) and not (rsv << 4) & ~allowed, "ws: fin/rsv", fin, rsv)
        if op & 8:
            expect(len(payload) <= 125 and fin == 1, "ws: control frame", fin, len(payload))
            expect(rsv == 0, "ws: rsv on a control frame", rsv)
        else:
            expect((op == WS_CONT) == in_msg, "ws: fragmentation", op, in_msg)
            in_msg = not fin
        end += len(ws_frame(op, payload, fin, rsv, mask))
    if code is None:
        expect(sum(len(f[3]) for f in got) <= consumed <= len(data), "ws: payloads vs consumed")
        # Lengths are minimal, so the frames as sent are the only encoding.
        again = b"".join(ws_frame(op, p, fin, rsv, m)
                         for (fin, rsv, op, p), m in zip(got, masks))
        expect(again == data[:end], "ws: frames re-serialized differ from the input",
               again, data[:end])
        # Masked with another key (or unmasked when allowed): the same frames.
        key = b"\x00\x00\x00\x00" if settings.get("require_mask", True) else None
        other = b"".join(ws_frame(op, p, fin, rsv, key or b"\xa5\x5a\x01\xff")
                         for fin, rsv, op, p in got)
        expect(run_ws(other, **settings) == (got, len(other), None),
               "ws: the frames re-masked parse differently")
        if key is None:
            plain = b"".join(ws_frame(op, p, fin, rsv, None) for fin, rsv, op, p in got)
            expect(run_ws(plain, **settings) == (got, len(plain), None),
                   "ws: the frames unmasked parse differently")
    return frames, ref_err


def check_ws_frames(raw):
    """ws_frames: raw stream (decode_ws_frames_input) against the reference,
    the prefix property at a few more cuts, and the same bytes fed in pieces
    at those cuts."""
    settings, data = decode_ws_frames_input(raw)
    frames, ref_err = check_ws_stream(data, settings)
    cuts = {len(data) // 2, len(data) - 1, (raw[0] * 131 + len(data)) % (len(data) + 1)} if raw else set()
    for pos, h, n, mask in list(ws_headers(data))[:6]:
        cuts.update((pos + 1, pos + h - 1, pos + h + n // 2))
    fail_at = ref_err[1] if ref_err else len(data) + 1
    for k in sorted(c for c in cuts if 0 <= c <= len(data)):
        got, consumed, code = run_ws(data[:k], **settings)
        if code is not None:
            expect(k >= fail_at and code == ref_err[0],
                   "ws: data[:%d] refused with %d, the whole %r" % (k, code, ref_err))
        else:
            expect(k < fail_at, "ws: data[:%d] accepted, the whole refused at %d" % (k, fail_at))
            expect(got == frames[:len(got)], "ws: data[:%d]: frames not a prefix of the whole's" % k,
                   got, frames)
            expect(consumed == k, "ws: data[:%d] consumed" % k, consumed)
    # Resumability: the same bytes in pieces at those cuts (and byte by byte
    # when short) give the whole's result, as the server's reads would.
    # What data gave whole, as check_ws_stream established it.
    whole = (frames, len(data), None) if ref_err is None else (None, None, ref_err[0])
    pieces = sorted(c for c in cuts if 0 <= c <= len(data))
    split = run_ws(data, cuts=pieces, **settings)
    expect(split == whole, "ws: fed in pieces at %r, the result differs" % pieces, split, whole)
    if len(data) <= 64:
        bytewise = run_ws(data, cuts=range(len(data)), **settings)
        expect(bytewise == whole, "ws: fed byte by byte, the result differs", bytewise, whole)


# -- UTF-8 (RFC 6455 8.1) --------------------------------------------------------


def decode_utf8_input(raw):
    """ws_utf8 input: byte 0 (bits 0-2: number of cuts; bit 3: a ping
    before every continuation frame), 4 bytes of mask key, 2 bytes per cut
    (big-endian, taken modulo len(text) + 1), then the text."""
    raw = bytes(raw)
    ncuts = raw[0] & 7 if raw else 0
    pings = bool(raw[0] & 8) if raw else False
    mask = (raw[1:5] + b"\0\0\0\0")[:4]
    cut_bytes = raw[5:5 + 2 * ncuts]
    text = raw[5 + 2 * ncuts:]
    cuts = sorted(int.from_bytes(cut_bytes[i:i + 2], "big") % (len(text) + 1)
                  for i in range(0, len(cut_bytes) - 1, 2))
    return mask, cuts, pings, text


def encode_utf8_input(text, cuts=(), pings=False, mask=b"\x37\xfa\x21\x3d"):
    return bytes([len(cuts) | (8 if pings else 0)]) + mask + b"".join(
        struct.pack(">H", c) for c in cuts) + text


def _utf8_message(text, cuts, pings, mask):
    """The frames carrying text as one message split at cuts; returns the
    stream, the expected frames and the stream offset of each text piece."""
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    stream, frames, starts = b"", [], []
    for i, p in enumerate(pieces):
        if i and pings:
            ping = b"p%d" % i
            stream += ws_frame(WS_PING, ping, mask=mask)
            frames.append((1, 0, WS_PING, ping))
        fin = int(i == len(pieces) - 1)
        op = WS_CONT if i else WS_TEXT
        f = ws_frame(op, p, fin, mask=mask)
        starts.append(len(stream) + len(f) - len(p))
        stream += f
        frames.append((fin, 0, op, p))
    return stream, frames, pieces, starts


def check_ws_utf8(raw):
    """ws_utf8: a text message is accepted iff bytes.decode('utf-8') accepts
    it, whole or split over fragments, and refused at its first invalid byte."""
    mask, cuts, pings, text = decode_utf8_input(raw)
    try:
        text.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    for cs in ([], cuts):
        stream, frames, pieces, starts = _utf8_message(text, cs, pings, mask)
        ref = Utf8Ref()
        at = None
        for p, s in zip(pieces, starts):
            bad = ref.feed(p)
            if bad is not None:
                at = s + bad + 1
                break
        if at is None and not ref.finish():
            at = len(stream)  # ends inside a character: refused with the last frame
        expect((at is None) == valid, "Utf8Ref disagrees with bytes.decode", text, at)
        got, consumed, code = run_ws(stream)
        if valid:
            expect(code is None, "ws_utf8: valid text refused (%r), cuts %r" % (code, cs), text)
            expect(got == frames and consumed == len(stream), "ws_utf8: frames", got, frames)
            continue
        expect(code == 1007, "ws_utf8: invalid text not refused with 1007 (%r), cuts %r"
               % (code, cs), text)
        before = run_ws(stream[:at - 1])
        expect(before[2] is None, "ws_utf8: refused before the first invalid byte (offset %d), "
               "cuts %r" % (at - 1, cs), text)
        expect(run_ws(stream[:at])[2] == 1007, "ws_utf8: not refused at the first invalid byte "
               "(offset %d), cuts %r" % (at - 1, cs), text)
        expect(before[0] == frames[:len(before[0])], "ws_utf8: frames before the error", before[0])


# -- permessage-deflate (RFC 7692 7.2.2) ------------------------------------------


def _zlib_inflate(pieces, max_size):
    """Python's zlib over the pieces, as yimmo's loop stops: 1007 on a zlib
    error or payload bytes after a final block, 1009 once max_size + 1 bytes
    are out (checked after each piece), else ("ok", bytes) at a final block
    or ("open", bytes) when all was read without one."""
    d = zlib.decompressobj(-15)
    limit = max_size + 1 if max_size < (1 << 62) else 0
    out = b""
    for i, piece in enumerate(pieces):
        try:
            out += d.decompress(piece, limit and limit - len(out))
        except zlib.error:
            return 1007, None
        if d.eof:
            # Only what is left of the tail may follow a final block.
            if len(d.unused_data) + sum(len(p) for p in pieces[i + 1:]) > len(DEFLATE_TAIL):
                return 1007, None
            break
        if len(out) > max_size:
            return 1009, None
    if len(out) > max_size:
        return 1009, None
    return ("ok" if d.eof else "open"), out


def ref_inflate(data, max_size):
    """What inflate_ws_message may answer for data, from Python's zlib on
    data + 00 00 FF FF: a list of verdicts, each ("ok", bytes), (1007, None),
    (1009, None) or ("open", bytes) when every byte was read but Python
    cannot tell whether the stream stopped between blocks (yimmo answers the
    bytes if it did, 1007 if the message was cut inside a block).

    A message both corrupt and too big may be refused either way: zlib is
    run on the input in one piece, and in yimmo's two (data, then the tail,
    so the cap may be hit before the tail shows the corruption).
    """
    if not data:
        return [("ok", b"")]  # RFC 7692 7.2.3.6: an empty payload is an empty message
    data = bytes(data)
    return [_zlib_inflate([data + DEFLATE_TAIL], max_size),
            _zlib_inflate([data, DEFLATE_TAIL], max_size)]


def run_inflate(data, **kw):
    try:
        out = inflate_ws_message(data, **kw)
    except ParseError as e:
        expect(len(e.args) == 4 and e.args[2] == "websocket"
               and e.args[1] == e.args[3] == e.code, "inflate ParseError args", e.args)
        expect(e.code in (1007, 1009), "inflate close code", e.args)
        return e.code
    expect(type(out) is bytes, "inflate result type", type(out))
    return out


_INFLATE_MAX = ("default", "small", "len", "len-1", 0, (1 << 64) - 1, 1, "2len")
_STRATEGIES = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE,
               zlib.Z_FIXED)


def decode_inflate_input(raw):
    """ws_inflate input: 4 bytes of settings, then the data.

    byte 0: bit 0 valid mode (the data is a payload deflated here, else the
    data is inflated as it is); bits 1-3 max_size (16 MiB, byte 2, the
    payload's length, length - 1, 0, 2**64-1, 1, twice the length; the
    "length" ones are the data's in random mode); bit 4 context takeover
    kept; bit 5 end with a final block (Z_FINISH) instead of a sync flush;
    bit 6 flush with Z_FULL_FLUSH between pieces.
    byte 1: level (% 10), strategy (// 10 % 5). byte 2: small max_size;
    the low 3 bits of wbits (-9..-15), pieces (bits 3-5).
    byte 3: repeat the payload this many times more (at most 256 KiB).
    """
    raw = bytes(raw)
    head, data = (raw[:4] + b"\0\0\0\0")[:4], raw[4:]
    b0, b1, b2, b3 = head
    mode = {
        "valid": bool(b0 & 1),
        "no_context_takeover": not b0 & 0x10,
        "finish": bool(b0 & 0x20),
        "flush": zlib.Z_FULL_FLUSH if b0 & 0x40 else zlib.Z_SYNC_FLUSH,
        "level": b1 % 10,
        "strategy": _STRATEGIES[b1 // 10 % 5],
        "wbits": -(9 + (b2 & 7) % 7),
        "pieces": 1 + (b2 >> 3 & 7),
    }
    if mode["valid"] and data:
        data = data * min(1 + b3, max(1, (256 << 10) // len(data)))
    choice = _INFLATE_MAX[b0 >> 1 & 7]
    n = len(data)
    mode["max_size"] = {"default": WS_MAX, "small": b2, "len": n, "len-1": max(0, n - 1),
                        "2len": 2 * n}.get(choice, choice)
    return mode, data


def deflate_message(payload, wbits=-15, level=6, strategy=zlib.Z_DEFAULT_STRATEGY,
                    pieces=1, flush=zlib.Z_SYNC_FLUSH, finish=False):
    """What a permessage-deflate sender makes of payload (RFC 7692 7.2.1):
    raw DEFLATE, flushed, the 00 00 FF FF tail removed; finish: ended with a
    final block instead (7.2.3.3)."""
    c = zlib.compressobj(level, zlib.DEFLATED, wbits, 8, strategy)
    step = max(1, -(-len(payload) // pieces))
    out = []
    for i in range(0, len(payload), step):
        out.append(c.compress(payload[i:i + step]))
        if i + step < len(payload):
            out.append(c.flush(flush))
    out.append(c.flush(zlib.Z_FINISH if finish else zlib.Z_SYNC_FLUSH))
    msg = b"".join(out)
    if not finish:
        expect(msg.endswith(DEFLATE_TAIL), "zlib sync flush without its tail", msg[-8:])
        msg = msg[:-4]
    return msg


def check_ws_inflate(raw):
    """ws_inflate: zlib-made messages round-trip under the cap (1009 over
    it); any bytes give what Python's zlib gives, or 1007/1009, never more
    than max_size bytes."""
    mode, data = decode_inflate_input(raw)
    max_size = mode["max_size"]
    kw = {"max_size": max_size, "no_context_takeover": mode["no_context_takeover"]}
    if mode["valid"]:
        msg = deflate_message(data, mode["wbits"], mode["level"], mode["strategy"],
                              mode["pieces"], mode["flush"], mode["finish"])
        got = run_inflate(msg, **kw)
        if len(data) <= max_size:
            expect(got == data, "inflate: a zlib-made message does not round-trip",
                   mode, msg, got if isinstance(got, int) else len(got))
        else:
            expect(got == 1009, "inflate: %d bytes over max_size %d not refused with 1009"
                   % (len(data), max_size), got if isinstance(got, int) else len(got))
        data = msg  # and the same bytes through the differential below
    got = run_inflate(data, **kw)
    if isinstance(got, bytes):
        expect(len(got) <= max_size, "inflate: output over max_size", len(got), max_size)
    verdicts = ref_inflate(data, max_size)
    ok = False
    for verdict, out in verdicts:
        if verdict == "ok":
            ok = ok or got == out
        elif verdict == "open":
            ok = ok or got == out or got == 1007
        else:
            ok = ok or got == verdict
    expect(ok, "inflate: zlib says %r, yimmo %r" % (
        [(v, o if o is None else len(o)) for v, o in verdicts],
        got if isinstance(got, int) else "%d bytes" % len(got)), data, max_size)


# ---- the WSGI environ (PEP 3333) ----------------------------------------------
#
# build_wsgi_environ runs the WSGIServer's environ code on a request parsed
# from bytes. The environ is re-derived here from parse_http_request's tuple
# (itself held to the reference by check_accepted) and PEP 3333 / RFC 3875.

WSGI_KEYS = frozenset((
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "RAW_URI",
    "SERVER_PROTOCOL", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT",
    "wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors", "wsgi.multithread",
    "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated", "wsgi.file_wrapper"))
_ENVIRON_SCRIPT_NAMES = ("", "/app", "/", "/a b\xe9")
_ENVIRON_SCHEMES = ("http", "https")
_ENVIRON_REMOTES = (("127.0.0.1", 12345), ("::1", 0), ("10.0.0.255", 65535), ("", 1))
_ENVIRON_SERVERS = (("localhost", "8000"), ("example.org", ""), ("::1", "443"), ("h\xe9", "80"))
_HTTP_KEY_RE = re.compile(r"HTTP_[!#$%&'*+.^_`|~0-9A-Z]+")


def decode_environ_input(raw):
    """Split a wsgi_environ input into (settings, request bytes).

    Byte 0 picks the settings: bits 0-1 script_name, bit 2 url_scheme, bits
    3-4 remote, bits 5-6 server (the _ENVIRON_* tuples), bit 7 proxied; the
    rest is data.
    """
    if not raw:
        return {}, b""
    b0 = raw[0]
    settings = {"script_name": _ENVIRON_SCRIPT_NAMES[b0 & 3],
                "url_scheme": _ENVIRON_SCHEMES[b0 >> 2 & 1],
                "remote": _ENVIRON_REMOTES[b0 >> 3 & 3],
                "server": _ENVIRON_SERVERS[b0 >> 5 & 3],
                "proxied": bool(b0 >> 7)}
    return settings, bytes(raw[1:])


def encode_environ_input(data, script_name="", url_scheme="http",
                         remote=("127.0.0.1", 12345), server=("localhost", "8000"), proxied=False):
    b0 = (_ENVIRON_SCRIPT_NAMES.index(script_name) | _ENVIRON_SCHEMES.index(url_scheme) << 2
          | _ENVIRON_REMOTES.index(remote) << 3 | _ENVIRON_SERVERS.index(server) << 5
          | int(proxied) << 7)
    return bytes([b0]) + data


_SECURE_SCHEME = {b"x-forwarded-proto": b"https", b"x-forwarded-protocol": b"ssl",
                  b"x-forwarded-ssl": b"on"}


def ref_url_scheme(headers, url_scheme, proxied):
    """gunicorn's secure_scheme_headers, from a trusted proxy: each says
    https with its value (ASCII case aside), http with another; any http wins.
    headers are parse_http_request's (lower-case name, value) bytes pairs."""
    if not proxied:
        return url_scheme
    says = [v.lower() == _SECURE_SCHEME[n] for n, v in headers if n in _SECURE_SCHEME]
    if not says:
        return url_scheme
    return "https" if all(says) else "http"


def ref_path_info(path, script_name):
    """PEP 3333: (SCRIPT_NAME, PATH_INFO). PATH_INFO is the percent-decoded
    path as latin-1, without SCRIPT_NAME when the path lies under it (at a
    '/' boundary); a path outside it gets an empty SCRIPT_NAME."""
    from urllib.parse import unquote_to_bytes

    p = unquote_to_bytes(path.encode("latin-1")).decode("latin-1")
    if script_name and p.startswith(script_name) and (
            len(p) == len(script_name) or p[len(script_name)] == "/"):
        return script_name, p[len(script_name):]
    return "", p


def ref_target_authority(req):
    """The authority of an absolute-form target, or None."""
    method, target = req[0], req[1]
    if method != "CONNECT" and target != "*" and not target.startswith("/"):
        return re.split(r"[/?]", target.split("://", 1)[1], maxsplit=1)[0]
    return None


def ref_server_address(req, url_scheme, server):
    """(SERVER_NAME, SERVER_PORT): the absolute-form target's authority (RFC
    9112 3.2.2: it wins over Host), else Host, else the server's address; a
    missing or empty port is the scheme's default (RFC 3875 4.1.14-15, RFC
    3986 3.2.3)."""
    headers = req[5]
    auth = ref_target_authority(req)
    if auth is None:
        hosts = [v for n, v in headers if n == b"host"]
        if hosts:
            auth = hosts[0].decode("latin-1")
    if not auth:
        return server
    if auth.startswith("["):
        rb = auth.find("]")
        name, port = (auth[:rb + 1], auth[rb + 2:]) if rb >= 0 and auth[rb + 1:rb + 2] == ":" \
            else (auth, None)
    else:
        name, colon, port = auth.partition(":")
        port = port if colon else None
    return name, port if port else ("443" if url_scheme == "https" else "80")


def ref_environ_headers(headers):
    """The HTTP_* / CONTENT_* entries: names upper-cased with '-' as '_',
    Content-Type and Content-Length without the prefix (PEP 3333, RFC 3875
    4.1.18), repeats joined with ',' (RFC 9110 5.3) but Cookie with '; ' (RFC
    6265 5.4); a name holding '_' dropped (it could pose as another header)."""
    out = {}
    for name, value in headers:
        if name == b"content-type":
            key = "CONTENT_TYPE"
        elif name == b"content-length":
            key = "CONTENT_LENGTH"
        elif b"_" in name:
            continue
        else:
            key = "HTTP_" + name.upper().replace(b"-", b"_").decode("latin-1")
        v = value.decode("latin-1")
        if key in out:
            v = out[key] + ("; " if name == b"cookie" else ",") + v
        out[key] = v
    return out


def check_environ(raw):
    """wsgi_environ: build_wsgi_environ against parse_http_request and PEP 3333."""
    import sys

    import yimmo.wsgi
    from yimmo.parsers import build_wsgi_environ

    settings, data = decode_environ_input(raw)
    try:
        req = parse_http_request(data)
    except ParseError as e:
        try:
            build_wsgi_environ(data, **settings)
        except ParseError as e2:
            expect(e2.args == e.args, "environ: another error than the parser's", e.args, e2.args)
            return None
        raise Finding("environ: built for a request the parser refuses: %r" % (e.args,))
    check_accepted(data, req)
    env = build_wsgi_environ(data, **settings)
    expect(type(env) is dict, "environ is not a dict", type(env))
    script_name = settings.get("script_name", "")
    url_scheme = ref_url_scheme(req[5], settings.get("url_scheme", "http"),
                                settings.get("proxied", False))
    remote = settings.get("remote", ("127.0.0.1", 12345))
    server = settings.get("server", ("localhost", "8000"))

    for k, v in env.items():
        expect(type(k) is str, "environ key is not str", k)
        if k.startswith("wsgi."):
            continue
        expect(type(v) is str, "environ value is not str", k, v)
        # PEP 3333 "native strings": latin-1, so bytes round-trip.
        expect(v.encode("latin-1").decode("latin-1") == v, "value not latin-1", k, v)
    hdr = {k: v for k, v in env.items() if k not in WSGI_KEYS}
    expect(WSGI_KEYS <= env.keys(), "environ keys missing", sorted(WSGI_KEYS - env.keys()))
    for k in hdr:
        expect(k in ("CONTENT_TYPE", "CONTENT_LENGTH") or _HTTP_KEY_RE.fullmatch(k),
               "header key is not HTTP_[A-Z0-9_...] (no '-', no lower case)", k)
        expect(k not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"), "CONTENT_* duplicated", k)
    want_hdr = ref_environ_headers(req[5])
    if ref_target_authority(req):
        want_hdr["HTTP_HOST"] = ref_target_authority(req)   # RFC 9112 3.2.2: not Host
    expect(hdr == want_hdr, "header entries", hdr, want_hdr, req[1])

    expect(env["REQUEST_METHOD"] == req[0], "REQUEST_METHOD", env["REQUEST_METHOD"], req[0])
    expect((env["SCRIPT_NAME"], env["PATH_INFO"]) == ref_path_info(req[2], script_name),
           "SCRIPT_NAME, PATH_INFO", env["SCRIPT_NAME"], env["PATH_INFO"], req[2], script_name)
    expect(env["QUERY_STRING"] == req[3], "QUERY_STRING", env["QUERY_STRING"], req[3])
    expect(env["RAW_URI"] == req[1], "RAW_URI", env["RAW_URI"], req[1])
    expect(env["SERVER_PROTOCOL"] == req[4], "SERVER_PROTOCOL", env["SERVER_PROTOCOL"])
    got = (env["SERVER_NAME"], env["SERVER_PORT"])
    want = ref_server_address(req, url_scheme, server)
    expect(got == tuple(want), "SERVER_NAME/SERVER_PORT", got, want, req[1])
    expect((env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (remote[0], str(remote[1])),
           "REMOTE_ADDR/REMOTE_PORT", env["REMOTE_ADDR"], env["REMOTE_PORT"])

    expect(env["wsgi.version"] == (1, 0), "wsgi.version", env["wsgi.version"])
    expect(env["wsgi.url_scheme"] == url_scheme, "wsgi.url_scheme", env["wsgi.url_scheme"])
    expect(env["wsgi.input"].read() == req[6], "wsgi.input is not the body")
    expect(env["wsgi.errors"] is sys.stderr, "wsgi.errors", env["wsgi.errors"])
    expect(env["wsgi.file_wrapper"] is yimmo.wsgi.FileWrapper, "wsgi.file_wrapper")
    expect((env["wsgi.multithread"], env["wsgi.multiprocess"], env["wsgi.run_once"],
            env["wsgi.input_terminated"]) == (False, False, False, True), "wsgi.* flags")
    return env

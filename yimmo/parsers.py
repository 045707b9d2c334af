"""The engine's parsers, callable on bytes alone (for tests and fuzzers).

``inflate_ws_message(data, *, max_size, no_context_takeover=True)`` inflates one
permessage-deflate payload with the server's size cap (ParseError 1009 / 1007).

``parse_http_request(data)`` parses the first request in ``data`` with the
default limits; ``RequestParser(**limits).feed(data)`` parses incrementally and
returns every request completed so far (pipelined ones too). Both give a plain
12-tuple per request, in the order of :class:`ParsedRequest`'s fields:

    (method, target, path, query, version, headers, body, consumed,
     keep_alive, chunked, expect_continue, upgrade)

- ``method``, ``target``, ``path``, ``query``: ``str``, decoded as latin-1.
  ``path`` is the target up to ``?`` ("/" for an absolute-form target with an
  empty path, "*" for ``OPTIONS *``, the authority for ``CONNECT``); ``query``
  is what follows ``?``, or "".
- ``version``: "HTTP/1.0" or "HTTP/1.1" (HTTP/1.2+ is read as 1.1, RFC 9110 2.5).
- ``headers``: ``list[tuple[bytes, bytes]]``, names lowercased, values
  without surrounding whitespace, in arrival order.
- ``body``: ``bytes``, decoded (chunk framing and trailers removed).
- ``consumed``: ``int``, bytes of the request, including empty lines before it
  and the body's framing.
- ``keep_alive``, ``chunked``, ``expect_continue``, ``upgrade``: ``bool``.

A refused request raises :class:`ParseError` (a ``ValueError``) whose ``args``
are ``(reason, status, name, code)``, also readable as the attributes
``.reason``, ``.status`` (the HTTP status it is answered with: 400, 413, 414,
431, 501 or 505), ``.name`` ("YMO_E_BAD_METHOD") and ``.code``.
``parse_http_request`` raises it with name "YMO_AGAIN" and reason
"incomplete request" when ``data`` holds no complete request.

``RequestParser``'s limits are keyword-only: ``max_request_line``,
``max_field_size``, ``max_header_bytes``, ``max_headers``, ``max_body``. Its
errors are sticky: once ``feed`` raised, every later ``feed`` raises the same
error. If requests complete before an error within one ``feed``, they are
returned and the next ``feed`` raises. ``pending`` is the number of bytes
buffered that are not part of a returned request.

WebSocket frames (RFC 6455 section 5)
-------------------------------------

``parse_ws_frames(data, *, max_message=16 MiB, require_mask=True,
rsv_allowed=0, cuts=())`` runs the server's frame parser over ``data`` once and
returns ``(frames, consumed)``:

- ``frames``: ``list[tuple[int, int, int, bytes]]``, one
  ``(fin, rsv, opcode, payload)`` per *complete* frame, in order, payloads
  unmasked. ``fin`` is 0 or 1; ``rsv`` the three RSV bits as a number
  (4 = RSV1, 2 = RSV2, 1 = RSV3); ``opcode`` 0x0 continuation, 0x1 text,
  0x2 binary, 0x8 close, 0x9 ping, 0xA pong. A frame cut off at the end of
  ``data`` is not returned.
- ``consumed``: ``int``, the bytes read (a partial header counts).

``max_message`` caps a data message's payload summed over its fragments
(control frames do not count). ``require_mask`` is True for a server
reading client frames. ``rsv_allowed`` is the RSV bits an extension
negotiated, as they sit in the first header byte (0x40: RSV1, what
permessage-deflate uses); an allowed bit then still only goes on the first
frame of a data message (never on a continuation or a control frame).
``data`` is any bytes-like object; it is not modified (the payload is
unmasked on a copy). ``cuts``, ascending offsets into ``data``,
feeds it in pieces, each parsed to its end before the next, as the server's
reads deliver bytes: the parser resumes inside headers, payloads and the
masking key, and the result must be the same as whole (the ``ws_frames``
fuzzer checks that). An offset out of order or beyond ``data`` raises
``ValueError``.

Bytes that break a rule raise :class:`ParseError` with ``args``
``(reason, close_code, "websocket", close_code)``: ``.status`` and
``.code`` are the close code the server sends: 1002 (unmasked client frame,
RSV bits not negotiated, reserved opcode, a control frame over 125 bytes or
fragmented, a non-minimal 16/64-bit length, a 64-bit length with its top bit
set, a continuation with no message open, a new message inside a fragmented
one), 1007 (invalid UTF-8 in an uncompressed text message, raised at the
first byte that cannot be valid, also when the sequence spans fragments, or
a message ending inside a character) or 1009 (over ``max_message``, raised
as soon as a frame header announces it). Frames before the bad one are
lost with the exception; parse ``data[:n]`` to get them. Close frame
payloads (code and reason) are not checked here; the session does that.

WSGI environ (PEP 3333)
-----------------------

``build_wsgi_environ(data, *, script_name="", url_scheme="http",
remote=("127.0.0.1", 12345), server=("localhost", "8000"), proxied=False)``
parses the first
request in ``data`` as :func:`parse_http_request` does (same limits, same
:class:`ParseError`, "YMO_AGAIN" when the request or its body is incomplete)
and returns the environ ``dict`` a ``WSGIServer`` with that ``script_name``
and ``url_scheme`` would give the application, built by the same C code:

- ``REQUEST_METHOD``, ``QUERY_STRING`` (raw), ``RAW_URI`` (the target),
  ``SERVER_PROTOCOL``; ``PATH_INFO`` percent-decoded as latin-1, with
  ``SCRIPT_NAME`` taken off the front when the path lies under it.
- Each header as ``HTTP_<NAME>`` (upper case, ``-`` as ``_``), except
  Content-Type and Content-Length (``CONTENT_TYPE``, ``CONTENT_LENGTH``);
  repeated fields joined with ``,`` (``Cookie`` with ``"; "``, RFC 6265
  5.4). A name containing ``_`` is dropped: mapped, it could pose as another
  header.
- ``SERVER_NAME`` / ``SERVER_PORT`` from an absolute-form target's authority
  (which is then ``HTTP_HOST`` too: RFC 9112 3.2.2 has Host ignored), else
  Host, else ``server`` (the server uses its local address there); a missing
  or empty port is 80, or 443 when ``url_scheme`` is "https".
- ``REMOTE_ADDR`` / ``REMOTE_PORT`` from ``remote`` (a ``(str, int)`` pair).
- With ``proxied`` (the peer is one of ``forwarded_allow_ips``),
  ``X-Forwarded-Proto: https``, ``X-Forwarded-Protocol: ssl`` or
  ``X-Forwarded-Ssl: on`` make ``wsgi.url_scheme`` "https", another value of
  them "http", and proxies that disagree "http"; the default port follows.
- ``wsgi.input`` is an ``io.BytesIO`` of the decoded body (the server's is a
  stream reading the connection; both give the same bytes);
  ``wsgi.multithread`` and ``wsgi.multiprocess`` are False.

Every value is a latin-1 ``str`` except the ``wsgi.*`` objects.
"""
from typing import List, NamedTuple, Tuple, Union

from ._yimmo import (ParseError, RequestParser, build_wsgi_environ, inflate_ws_message,
                     parse_http_request, parse_ws_frames)

__all__ = [
    "ParseError",
    "ParsedRequest",
    "RequestParser",
    "parse_http_request",
    "parse_request",
    "parse_ws_frames", "inflate_ws_message",
    "build_wsgi_environ"]

BytesLike = Union[bytes, bytearray, memoryview]


class ParsedRequest(NamedTuple):
    """One parsed request; the fields of the tuples the C parser returns."""

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    consumed: int
    keep_alive: bool
    chunked: bool
    expect_continue: bool
    upgrade: bool


def parse_request(data: BytesLike) -> ParsedRequest:
    """Parse the first request in ``data`` into a :class:`ParsedRequest`.

    Raises :class:`ParseError` as :func:`parse_http_request` does.
    """
    return ParsedRequest(*parse_http_request(data))

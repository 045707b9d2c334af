"""The engine's parsers, callable on bytes alone (for tests and fuzzers).

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
"""
from typing import List, NamedTuple, Tuple, Union

from ._yimmo import ParseError, RequestParser, parse_http_request

__all__ = [
    "ParseError",
    "ParsedRequest",
    "RequestParser",
    "parse_http_request",
    "parse_request",
]

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

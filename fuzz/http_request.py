"""Fuzz the HTTP request parser: RequestParser.feed and parse_http_request.

The input is fed whole with the default limits. Invariants (fuzz/checks.py):
bytes consumed never exceed the input and pending + consumed == fed; every
accepted request re-splits by hand to the same method, target, fields and
version; its body is exactly what its framing says (Content-Length bytes or
the reference-decoded chunks) and it ends where that framing ends; errors are
sticky; parse_http_request agrees with the first request feed() returns.
"""
from _harness import main

from checks import check_request

if __name__ == "__main__":
    main(check_request)

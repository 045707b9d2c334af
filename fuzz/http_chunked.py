"""Fuzz the chunked body decoder (RFC 9112 7.1).

The input is the body after a fixed head with Transfer-Encoding: chunked
(checks.CHUNKED_HEAD). The parser must accept it exactly when the strict
Python reference (checks.ref_dechunk) does, with the same decoded body and
the same end; plus every invariant of http_request.
"""
from _harness import main

from checks import check_chunked

if __name__ == "__main__":
    main(check_chunked)

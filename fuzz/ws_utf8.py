"""Fuzz the UTF-8 validation of WebSocket text messages (RFC 6455 8.1).

Input (checks.decode_utf8_input): a byte with the number of cuts and whether
to put a ping before every continuation, a mask key, the cuts, then the text.
The text goes out as one masked text frame, and again split at the cuts over
continuation frames. parse_ws_frames must accept it iff Python's strict
``bytes.decode("utf-8")`` does (surrogates, overlongs, past U+10FFFF and
truncated characters refused, RFC 3629), both ways; when it refuses, with
1007, at the first byte that cannot be valid as an incremental decoder
(codecs, checks.Utf8Ref) finds it: the stream up to the byte before is
accepted, the stream up to that byte refused.
"""
from _harness import main

from checks import check_ws_utf8

if __name__ == "__main__":
    main(check_ws_utf8)

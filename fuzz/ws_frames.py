"""Fuzz the WebSocket frame parser: yimmo.parsers.parse_ws_frames.

Input: one settings byte (require_mask, rsv_allowed, max_message, and whether
the harness masks the payloads itself), then the bytes a client sends
(checks.decode_ws_frames_input). Invariants (fuzz/checks.py,
check_ws_frames): the frames, consumed count and close code equal a reference
parser written from RFC 6455 5 and RFC 7692 6, and the error is found at the
same byte (data[:at - 1] parses, data[:at] does not); a ParseError's code is
1002, 1007 or 1009; control frames are at most 125 bytes with FIN; payloads
sum to at most consumed <= len(data); the frames re-serialized with their
mask keys are the input byte for byte (lengths are minimal), and re-masked
with another key parse to the same; every prefix cut gives a prefix of the
whole's frames and is refused only where the whole is, with the same code;
the same bytes fed in pieces at those cuts (byte by byte when short) give the
whole's result.
"""
from _harness import main

from checks import check_ws_frames

if __name__ == "__main__":
    main(check_ws_frames)

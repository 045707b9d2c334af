"""Fuzz permessage-deflate inflation with its size cap: inflate_ws_message.

Input (checks.decode_inflate_input): 4 bytes of settings, then data. In valid
mode the data (repeated, to reach high ratios) is deflated by Python's zlib
as a sender would (raw, wbits -9..-15, any level and strategy, several
flushes, the 00 00 FF FF tail removed, or a final block): it must inflate to
exactly the data when that fits max_size, and raise 1009 when it does not.
In either mode the bytes are also compared with Python's zlib on data + the
tail: the same output, 1007 where zlib fails or bytes follow a final block,
1009 past max_size; never another error, never more than max_size bytes.
max_size is chosen by the fuzzer: the default, 0, 1, a byte's worth, or the
payload's length +-1.
"""
from _harness import main

from checks import check_ws_inflate

if __name__ == "__main__":
    main(check_ws_inflate)

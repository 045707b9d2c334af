"""Minimize a fuzz finding and keep it as a regression input.

    python fuzz/keep.py TARGET FILE

Runs the target's check (fuzz/checks.py) on FILE; while the same failure
(exception type and the message up to its first ':') still happens, drops
chunks of the input, then single bytes, and simplifies bytes to 'a'. The
result goes to fuzz/regressions/TARGET/<sha1>, which
tests/test_fuzz_regressions.py replays on every run. An input that passes
the checks (a sanitizer crash: the process died in C) is kept as it is;
replay it with fuzz/run.sh TARGET FILE to see the report.
"""
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import checks  # noqa: E402

CHECKS = {
    "http_request": checks.check_request,
    "http_chunked": checks.check_chunked,
    "http_split": checks.check_split,
    "http_h11_diff": checks.check_h11,
    "ws_frames": checks.check_ws_frames,
    "ws_utf8": checks.check_ws_utf8,
    "ws_inflate": checks.check_ws_inflate,
    "wsgi_environ": checks.check_environ,
}


def failure(check, data):
    try:
        check(data)
    except Exception as e:  # any exception is the finding
        return type(e).__name__, str(e).split(":")[0]
    return None


def minimize(check, data):
    want = failure(check, data)
    if want is None:
        return data, None
    n = max(len(data) // 2, 1)
    while n >= 1:
        i, shrunk = 0, False
        while i < len(data):
            cand = data[:i] + data[i + n:]
            if failure(check, cand) == want:
                data, shrunk = cand, True
            else:
                i += n
        if not shrunk:
            n //= 2
    for i in range(len(data)):
        if data[i:i + 1] != b"a":
            cand = data[:i] + b"a" + data[i + 1:]
            if failure(check, cand) == want:
                data = cand
    return data, want


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in CHECKS:
        sys.exit("usage: python fuzz/keep.py {%s} FILE" % ",".join(CHECKS))
    target, path = sys.argv[1:]
    with open(path, "rb") as f:
        data = f.read()
    small, why = minimize(CHECKS[target], data)
    out = os.path.join(HERE, "regressions", target)
    os.makedirs(out, exist_ok=True)
    dest = os.path.join(out, hashlib.sha1(small).hexdigest())
    with open(dest, "wb") as f:
        f.write(small)
    print("%s (%d -> %d bytes): %s" % (os.path.relpath(dest), len(data), len(small),
                                       "%s: %s" % why if why else "passes the checks; kept as is"))
    print("bytes: %r" % small)


if __name__ == "__main__":
    main()

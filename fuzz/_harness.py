"""What every harness in fuzz/ shares: atheris setup around one check.

A harness is ``python fuzz/<target>.py [libFuzzer args]``. Run on the
instrumented build (fuzz/run.sh) libFuzzer sees the C parser's coverage and
ASan/UBSan watch it; run on a normal build it still works, blind to C.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def main(check, instrument=()):
    """Fuzz check(data: bytes); a raised exception is a finding.

    instrument: Python modules whose branches should guide the fuzzer too
    (imported under atheris's instrumentation before fuzzing starts).
    """
    import atheris

    for name in instrument:
        with atheris.instrument_imports(include=[name]):
            __import__(name)
    import yimmo._yimmo as ext

    want = os.environ.get("YIMMO_FUZZ_EXT_DIR")
    if want and not os.path.abspath(ext.__file__).startswith(os.path.abspath(want)):
        sys.exit("harness: loaded %s, not the build in %s" % (ext.__file__, want))
    sys.stderr.write("harness: yimmo extension %s\n" % ext.__file__)
    # In the leak-checked replays LeakSanitizer looks after every input:
    # reference cycles the check's Python code left (exception tracebacks,
    # h11's objects) are garbage the collector frees later, not leaks, so
    # collect them first. A reference really leaked is never garbage and is
    # still reported.
    collect = any(a == "-detect_leaks=1" for a in sys.argv)
    import gc

    def one_input(data):
        check(data)
        if collect:
            gc.collect()

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

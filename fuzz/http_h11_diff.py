"""Differential fuzzing against h11 (pip install h11).

Where both parsers accept a request they must agree on method, target,
version, fields and, above all, on where it ends and what its body is (a
framing disagreement is request smuggling). One-sided refusals are allowed;
the intentional differences and their RFC reasons are checks.H11_DIFFERENCES.
h11 itself is instrumented so that its branches guide the fuzzer too.
"""
from _harness import main

from checks import check_h11

if __name__ == "__main__":
    main(check_h11, instrument=("h11",))

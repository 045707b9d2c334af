"""Fuzz resumability: the same bytes whole, split, and byte by byte.

The input chooses the limits (small ones reach every limit branch) and the
cut points; see checks.decode_split_input for the layout. The requests,
error (name, status, reason) and pending count must be identical however
the payload is cut; any difference is a bug.
"""
from _harness import main

from checks import check_split

if __name__ == "__main__":
    main(check_split)

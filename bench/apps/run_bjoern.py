"""Benchmark target: bjoern serving bench/apps/hello_wsgi.py.

    python bench/apps/run_bjoern.py --port N
"""
import argparse
import os
import sys

import bjoern

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hello_wsgi import app  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    bjoern.run(app, args.host, args.port)


if __name__ == "__main__":
    main()

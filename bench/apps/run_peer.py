"""Serve a WSGI app from bench/apps with a peer server that has no command
line of its own (or none that takes the same options).

    python bench/apps/run_peer.py {bjoern,fastwsgi,socketify} --port N
        [--workers N] [--app MODULE:NAME]

bjoern has no workers: --workers above 1 is an error.
"""
import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load(spec):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "app")


def _shim_pkg_resources():
    """fastwsgi 0.0.9 imports pkg_resources (only to print its own version),
    which recent setuptools no longer ship: provide the one function it uses."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import types
        from importlib.metadata import version
        mod = types.ModuleType("pkg_resources")
        mod.get_distribution = lambda name: types.SimpleNamespace(version=version(name))
        sys.modules["pkg_resources"] = mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server", choices=["bjoern", "fastwsgi", "socketify"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--app", default="hello_wsgi:app")
    args = ap.parse_args()
    app = load(args.app)
    if args.server == "bjoern":
        if args.workers != 1:
            sys.exit("bjoern has no workers")
        import bjoern
        bjoern.run(app, args.host, args.port)
    elif args.server == "fastwsgi":
        _shim_pkg_resources()
        import fastwsgi
        fastwsgi.run(app, host=args.host, port=args.port, loglevel=0, workers=args.workers)
    else:
        from socketify import AppListenOptions, WSGI
        WSGI(app).listen(AppListenOptions(port=args.port, host=args.host),
                         lambda config: None).run(workers=args.workers)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

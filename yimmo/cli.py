"""`yimmo-wsgi` (also `python -m yimmo`): serve a WSGI application.

    yimmo-wsgi [OPTIONS] 'pkg.module:app'
    yimmo-wsgi -w 4 -b 0.0.0.0:8000 'app:create_app("prod")'

The part after the colon is any Python expression evaluated in the module's
namespace; a module alone means 'module:application' (then 'module:app').
The options are in yimmo/config.py and docs/wsgi.md.

Exit status: 0 after a clean stop, 1 when a socket cannot be bound, 2 for a
bad flag, variable, config file, certificate or app (one line on stderr, no
traceback), 3 when replacement workers cannot load the app and none is left
serving, 130 when Ctrl-C interrupts --check-config.
"""
import importlib
import os
import re
import signal
import sys
import traceback

from . import config

PROG = "yimmo-wsgi"

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AppError(Exception):
    """The app cannot be loaded; the message is one line for the user."""


def parse_app_spec(spec):
    """(module, expression or None, code or None) from 'module[:expression]'."""
    if not spec or not spec.strip():
        raise AppError("no application given (usage: %s [OPTIONS] MODULE:APP)" % PROG)
    module, sep, expr = spec.strip().partition(":")
    module = module.strip()
    if not _MODULE_RE.match(module):
        raise AppError("bad app %r: %r is not a module name (expected MODULE:EXPRESSION)"
                       % (spec, module))
    if not sep:
        return module, None, None
    expr = expr.strip()
    if not expr:
        raise AppError("bad app %r: nothing after ':'" % (spec,))
    try:
        code = compile(expr, "<app %s>" % spec, "eval")
    except SyntaxError as e:
        raise AppError("bad app %r: invalid expression %r: %s" % (spec, expr, e.msg)) from None
    except ValueError as e:  # NUL bytes
        raise AppError("bad app %r: %s" % (spec, e)) from None
    return module, expr, code


def _where(exc):
    """' (file:line)' of the innermost frame outside importlib, or ''."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen ") and "importlib" not in f.filename
              and f.filename != __file__]
    if not frames:
        return ""
    f = frames[-1]
    return " (%s:%s)" % (os.path.relpath(f.filename) if f.filename.startswith(os.getcwd())
                         else f.filename, f.lineno)


def _one_line(exc):
    text = str(exc).strip().replace("\n", " ")
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


class CtrlC(KeyboardInterrupt):
    """A KeyboardInterrupt from SIGINT, told apart from one the app raises."""


def _on_sigint(signum, frame):
    raise CtrlC()


def load_app(spec):
    """Import the module and evaluate the expression; AppError (one line) on any failure."""
    module, expr, code = parse_app_spec(spec)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise AppError("cannot import %r: no module named %r" % (module, e.name)) from None
        raise AppError("error importing %r: %s%s" % (module, _one_line(e), _where(e))) from None
    except SyntaxError as e:
        raise AppError("error importing %r: SyntaxError: %s (%s:%s)"
                       % (module, e.msg, e.filename, e.lineno)) from None
    except SystemExit as e:
        raise AppError("error importing %r: it called sys.exit(%r)%s" % (module, e.code, _where(e))) from None
    except CtrlC:
        raise   # the user's Ctrl-C while importing, not the app's
    except BaseException as e:     # KeyboardInterrupt raised by the module itself, too
        raise AppError("error importing %r: %s%s" % (module, _one_line(e), _where(e))) from None

    if expr is None:
        for name in ("application", "app"):
            if hasattr(mod, name):
                app, shown = getattr(mod, name), "%s:%s" % (module, name)
                break
        else:
            raise AppError("module %r has no 'application' or 'app'; name it as %s:NAME"
                           % (module, module))
    elif _NAME_RE.match(expr):
        if not hasattr(mod, expr):
            raise AppError("module %r has no attribute %r" % (module, expr))
        app, shown = getattr(mod, expr), "%s:%s" % (module, expr)
    else:
        shown = "%s:%s" % (module, expr)
        try:
            app = eval(code, vars(mod))
        except SystemExit as e:
            raise AppError("app %r called sys.exit(%r)%s" % (shown, e.code, _where(e))) from None
        except CtrlC:
            raise
        except BaseException as e:
            raise AppError("app %r raised %s%s" % (shown, _one_line(e), _where(e))) from None
    if not callable(app):
        raise AppError("app %r is not callable (it is %s)" % (shown, type(app).__name__))
    return app


def check_tls(settings):
    """The tls= dict for the workers (None: no TLS), loaded once here as the server would.

    Called by the manager before it binds or forks, and on HUP before any
    old worker is replaced: a bad certificate, key, password or cipher list
    is a one-line ConfigError naming the file or setting.
    """
    tls = config.tls_config(settings)
    if tls is None:
        return None
    import yimmo
    check = getattr(yimmo, "check_tls", None)
    if check is None:
        raise config.ConfigError("--certfile: this yimmo build has no TLS support")
    try:
        check(tls)
    except (OSError, ValueError, TypeError) as e:
        raise config.ConfigError(_tls_error(e)) from None
    return tls


def _tls_error(exc):
    """One line from check_tls's exception; its message already names the file or setting."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename and str(exc.filename) not in text:
            text = "%s: %s" % (exc.filename, text)
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _die(msg, status=2):
    sys.stderr.write("%s: error: %s\n" % (PROG, msg))
    sys.stderr.flush()
    return status


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        settings = config.load(argv)
    except config.ConfigError as e:
        return _die(e)

    if settings.version:
        from . import __version__
        print("%s %s" % (PROG, __version__))
        return 0
    if settings.print_config:
        print(config.format_settings(settings))
        return 0

    # Ctrl-C while the app imports (--check-config, --preload) is the
    # user's; a KeyboardInterrupt the app raises is a broken app. The
    # manager installs its own handlers before it forks.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)

    # Like gunicorn: the current directory is importable.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)

    try:
        check_tls(settings)
    except config.ConfigError as e:
        return _die(e)

    try:
        parse_app_spec(settings.app)
        if settings.check_config:
            load_app(settings.app)
    except AppError as e:
        return _die(e)
    except CtrlC:
        return _die("interrupted", 130)

    # The log files open here, --check-config's included: it answers for
    # what the start would refuse.
    from .arbiter import Arbiter, Logs
    logs = Logs()
    try:
        logs.setup(settings)
    except OSError as e:
        return _die("cannot open log file %s: %s" % (e.filename, e.strerror or e))
    if settings.check_config:
        return 0

    def reload_settings():
        new = config.load(argv)
        parse_app_spec(new.app)
        if new.app != settings.app:
            raise config.ConfigError("the app cannot change on reload (%r -> %r)"
                                     % (settings.app, new.app))
        check_tls(new)  # Renewed certificates: a broken one keeps the old workers.
        return new

    arbiter = Arbiter(settings, loader=lambda: load_app(settings.app), app_error=AppError,
                      reload_settings=reload_settings, logs=logs)
    status = arbiter.run()
    if arbiter.fatal is not None:
        _die(arbiter.fatal, status)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

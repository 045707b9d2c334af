"""The settings of `yimmo-wsgi`: one table, read from four places.

Every option is defined once, in OPTIONS below: its name (also its key in a
TOML config file), its command-line flags (gunicorn's spelling), its
environment variable (``YIMMO_`` + the name in capitals), its type, default,
help text and validator. The CLI, the environment reader, the config-file
reader, ``--print-config`` and docs/wsgi.md all come from this table.

Precedence, highest first: command line > environment > config file >
default. A default may itself come from the environment when the platform
sets it (``$PORT`` for bind, ``$WEB_CONCURRENCY`` for workers); such a
default still ranks below a config file.

Errors are ConfigError with a one-line message naming where the bad value
came from (flag, variable or file key).

An option with no flags is set only in the environment or a config file:
``keyfile_password``, which on the command line would show in ``ps``. Such
a secret is printed as "***" by ``--print-config``. Checks that involve
several TLS options (``--keyfile`` without ``--certfile``, an ``https://``
bind without a certificate, ...) are made by ``tls_config()``, which also
builds the ``tls=`` dict of ``yimmo.WSGIServer``.
"""
import argparse
import ipaddress
import math
import os
import re
import sys

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.11+ is required.
    tomllib = None

__all__ = ["ConfigError", "Option", "OPTIONS", "Settings", "parse_bind", "build_parser",
           "load", "tls_config", "DEFAULT_ACCESS_LOG_FORMAT"]

DEFAULT_ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENV_PREFIX = "YIMMO_"


class ConfigError(Exception):
    """A bad flag, variable, file or value: the message is one line for the user."""


# --- Value converters and validators ------------------------------------------
# A converter turns a string (from the command line or the environment) or a
# TOML value into the option's type, raising ValueError with a short reason.

def _to_int(v):
    if isinstance(v, bool):
        raise ValueError("expected an integer, got %r" % (v,))
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip(), 10)
        except ValueError:
            pass
    raise ValueError("expected an integer, got %r" % (v,))


def _to_float(v):
    if isinstance(v, bool):
        raise ValueError("expected a number, got %r" % (v,))
    f = None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            pass
    if f is None or not math.isfinite(f):
        raise ValueError("expected a number, got %r" % (v,))
    return f


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _to_bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError("expected true or false, got %r" % (v,))


def _to_str(v):
    if isinstance(v, str):
        return v
    raise ValueError("expected a string, got %r" % (v,))


def _to_opt_str(v):
    if v is None:
        return None
    return _to_str(v)


def _to_str_list(v):
    """A list of strings. From the environment: separated by commas or spaces."""
    if isinstance(v, str):
        items = [s for s in re.split(r"[\s,]+", v) if s]
        if not items:
            raise ValueError("expected at least one value")
        return items
    if isinstance(v, list) and v and all(isinstance(s, str) for s in v):
        return list(v)
    raise ValueError("expected a string or a non-empty list of strings, got %r" % (v,))


def _nonempty_str(v):
    v = _to_str(v)
    if not v.strip():
        raise ValueError("must not be empty")
    return v


_CERT_REQS = {"none": "none", "optional": "optional", "required": "required",
              "0": "none", "1": "optional", "2": "required"}


def _to_cert_reqs(v):
    """none / optional / required, or gunicorn's 0 / 1 / 2 (ssl.CERT_*)."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if isinstance(v, str) and v.strip().lower() in _CERT_REQS:
        return _CERT_REQS[v.strip().lower()]
    raise ValueError("must be none, optional or required (or 0, 1, 2), got %r" % (v,))


def _to_tls_version(v):
    """1.2 or 1.3 (also TLSv1.2, and a TOML number 1.3)."""
    if isinstance(v, float):
        v = repr(v)
    if isinstance(v, str):
        t = v.strip().lower()
        if t.startswith("tlsv"):
            t = t[4:]
        if t in ("1.2", "1.3"):
            return t
    raise ValueError("must be 1.2 or 1.3 (TLS 1.0 and 1.1 are never accepted), got %r" % (v,))


def _to_sni_list(v):
    """CERT[,KEY] entries. From the environment: separated by spaces (the comma is CERT,KEY)."""
    if isinstance(v, str):
        items = v.split()
        if not items:
            raise ValueError("expected at least one CERT[,KEY]")
        return items
    if isinstance(v, list) and v and all(isinstance(s, str) for s in v):
        return list(v)
    raise ValueError("expected a string or a non-empty list of strings, got %r" % (v,))


def _check_sni(v):
    for item in v:
        parse_sni(item)


def parse_sni(item):
    """(certfile, keyfile or None) from 'CERT[,KEY]'."""
    cert, sep, key = item.partition(",")
    if not cert.strip() or (sep and not key.strip()) or "," in key:
        raise ValueError("%r: expected CERT or CERT,KEY" % (item,))
    return cert.strip(), key.strip() if sep else None


def _at_least(n):
    def check(v):
        if v < n:
            raise ValueError("must be >= %s, got %s" % (n, v))
    return check


def _between(lo, hi):
    def check(v):
        if not lo <= v <= hi:
            raise ValueError("must be between %s and %s, got %s" % (lo, hi, v))
    return check


def _positive(v):
    if not v > 0:
        raise ValueError("must be > 0, got %s" % (v,))


def _choice(*choices):
    def check(v):
        if v not in choices:
            raise ValueError("must be one of %s, got %r" % (", ".join(choices), v))
    return check


def _check_binds(v):
    for spec in v:
        parse_bind(spec)


def _check_format(v):
    # A format gunicorn accepts: %(atom)s pieces; literal % as %%.
    try:
        format_atoms(v)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError("not a valid log format (%s)" % (e,)) from None


def format_atoms(fmt):
    """The atoms an access log format uses. Each stands in as a value of its
    kind, so gunicorn's numeric ones take numeric conversions (%(D)d,
    %(T).3f) and text ones do not; a bad format raises as it would per line."""
    names = set()

    class Atoms(dict):
        def __missing__(self, key):
            names.add(key)
            return 0 if key in _NUMERIC_ATOMS else "-"
    fmt % Atoms()
    return names


_NUMERIC_ATOMS = frozenset("BTDM")  # bytes sent and the durations: ints, as in gunicorn


# --- Bind addresses -----------------------------------------------------------

class Bind:
    """A parsed --bind value: kind is 'tcp', 'unix' or 'fd'.

    scheme is 'https' (always TLS), 'http' (always plain) or None (TLS when
    there is a certificate, as gunicorn); tls is the resolved choice, set by
    Settings.binds.
    """

    __slots__ = ("spec", "kind", "host", "port", "path", "fd", "scheme", "tls")

    def __init__(self, spec, kind, host=None, port=None, path=None, fd=None, scheme=None):
        self.spec, self.kind, self.host, self.port, self.path, self.fd = spec, kind, host, port, path, fd
        self.scheme = scheme
        self.tls = scheme == "https"

    def uses_tls(self, certfile):
        """Whether this bind speaks TLS when the certificate is certfile (None: none)."""
        return self.scheme == "https" or (self.scheme is None and certfile is not None)

    def __repr__(self):
        return "Bind(%r)" % (self.spec,)


_PORT_RE = re.compile(r"^[0-9]{1,5}$")


def _port(spec, s):
    if not _PORT_RE.match(s) or int(s) > 65535:
        raise ValueError("bad port %r in bind address %r" % (s, spec))
    return int(s)


def parse_bind(spec):
    """HOST:PORT, HOST (port 8000), [IPv6]:PORT, :PORT (all IPv4), unix:PATH, fd://N,
    and https://HOST:PORT or http://HOST:PORT (the port is then required)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty bind address")
    s = spec.strip()
    for scheme in ("https", "http"):
        if s.lower().startswith(scheme + "://"):
            rest = s[len(scheme) + 3:]
            if rest.startswith(("unix:", "fd:")):
                raise ValueError("bind address %r: %s:// takes HOST:PORT; unix: and fd:// binds "
                                 "speak TLS when --certfile is set" % (spec, scheme))
            if rest.endswith("/"):
                rest = rest[:-1]  # A pasted URL: https://host:8443/
            after_host = rest[rest.find("]") + 1:] if rest.startswith("[") else rest
            if ":" not in after_host:
                raise ValueError("bind address %r: give the port (%s://HOST:PORT)" % (spec, scheme))
            b = _parse_host_port(spec, rest)
            b.scheme, b.tls = scheme, scheme == "https"
            return b
    if s.startswith("unix:"):
        path = s[5:]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("bind address %r has no path" % (spec,))
        return Bind(spec, "unix", path=path)
    if s.startswith("fd://"):
        n = s[5:]
        if not (n.isascii() and n.isdigit() and len(n) <= 9):
            raise ValueError("bind address %r: fd:// takes a file descriptor number" % (spec,))
        return Bind(spec, "fd", fd=int(n))
    if "://" in s:
        raise ValueError("bind address %r: unknown scheme (use https://, http://, unix: or fd://)"
                         % (spec,))
    return _parse_host_port(spec, s)


def _parse_host_port(spec, s):
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError("bind address %r: missing ']'" % (spec,))
        host, rest = s[1:end], s[end + 1:]
        if not host:
            raise ValueError("bind address %r has an empty IPv6 host" % (spec,))
        if rest == "":
            return Bind(spec, "tcp", host=host, port=8000)
        if not rest.startswith(":"):
            raise ValueError("bind address %r: expected ':PORT' after ']'" % (spec,))
        return Bind(spec, "tcp", host=host, port=_port(spec, rest[1:]))
    if s.count(":") > 1:
        raise ValueError("bind address %r: write IPv6 addresses as [ADDR]:PORT" % (spec,))
    host, sep, port = s.partition(":")
    if any(c.isspace() or c in "/[]" for c in host):
        raise ValueError("bad host in bind address %r" % (spec,))
    return Bind(spec, "tcp", host=host or "0.0.0.0", port=_port(spec, port) if sep else 8000)


# --- The table ----------------------------------------------------------------

class Option:
    """One setting.

    flags=() means no command-line flag: the positional app (kind
    'positional'), or a setting read only from the environment and the
    config file (a secret, which `ps` would show on a command line).
    """

    __slots__ = ("name", "flags", "convert", "default", "help", "validate", "metavar", "kind",
                 "section", "maps_to", "secret")

    def __init__(self, name, flags, convert, default, help, validate=None, metavar=None,
                 kind="value", section="server", maps_to=None, secret=False):
        self.name = name
        self.flags = flags
        self.convert = convert
        self.default = default      # a value, or a callable(environ) -> value
        self.help = help
        self.validate = validate
        self.metavar = metavar
        self.kind = kind            # value | append | flag | positional
        self.section = section
        self.maps_to = maps_to      # the WSGIServer keyword it feeds, for the docs
        self.secret = secret        # never printed (--print-config shows "***")

    @property
    def env(self):
        return ENV_PREFIX + self.name.upper()

    @property
    def no_flag(self):
        """Set only in the environment or a config file."""
        return not self.flags and self.kind != "positional"

    def default_value(self, environ):
        return self.default(environ) if callable(self.default) else self.default

    def check(self, raw):
        """Convert and validate raw; ValueError with a reason on failure."""
        value = self.convert(raw)
        if self.validate is not None and value is not None:
            self.validate(value)
        return value


def _default_bind(environ):
    port = environ.get("PORT", "").strip()
    if port:
        return ["0.0.0.0:%s" % port]
    return ["127.0.0.1:8000"]


def _default_workers(environ):
    wc = environ.get("WEB_CONCURRENCY", "").strip()
    if wc:
        try:
            n = int(wc)
        except ValueError:
            raise ConfigError("WEB_CONCURRENCY=%r: expected an integer" % (wc,)) from None
        if n < 1:
            raise ConfigError("WEB_CONCURRENCY=%r: must be >= 1" % (wc,))
        return n
    return 1


def _default_forwarded(environ):
    return environ.get("FORWARDED_ALLOW_IPS", "").strip() or "127.0.0.1,::1"


def _default_script_name(environ):
    return environ.get("SCRIPT_NAME", "")


def _check_proxies(v):
    # The grammar the server itself reads (csrc/py/wsgi.c, inet_pton): an
    # address, or an address and a prefix length; no IPv6 zone, no netmask.
    for item in (i.strip() for i in v.split(",")):
        if not item or item == "*":
            continue
        addr, slash, bits = item.partition("/")
        try:
            if "%" in addr or (slash and not (bits.isascii() and bits.isdigit())):
                raise ValueError
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError("%r is not an IP address or network" % (item,)) from None


def _check_script_name(v):
    if v and (not v.startswith("/") or v.endswith("/")):
        raise ValueError("must be empty or a path like /app (no trailing slash), got %r" % (v,))


OPTIONS = [
    Option("app", (), _to_opt_str, None,
           "The WSGI application, 'MODULE:EXPRESSION' (the positional argument; "
           "'MODULE' alone means 'MODULE:application', then 'MODULE:app').",
           metavar="APP", kind="positional", section="app"),
    Option("config", ("-c", "--config"), _to_opt_str, None,
           "A TOML config file whose keys are option names.", metavar="FILE", section="config"),
    Option("bind", ("-b", "--bind"), _to_str_list, _default_bind,
           "Where to listen: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (TLS when --certfile is "
           "set), https://HOST:PORT (always TLS) or http://HOST:PORT (never); repeat for several. "
           "Default 127.0.0.1:8000, or 0.0.0.0:$PORT when $PORT is set.",
           validate=_check_binds, metavar="ADDRESS", kind="append"),
    Option("workers", ("-w", "--workers"), _to_int, _default_workers,
           "Worker processes. Default $WEB_CONCURRENCY, or 1.",
           validate=_at_least(1), metavar="INT", section="workers"),
    Option("threads", ("--threads",), _to_int, 0,
           "Application threads per worker; 0 runs the app on the event-loop thread.",
           validate=_between(0, 1024), metavar="INT", section="workers", maps_to="threads"),
    Option("timeout", ("-t", "--timeout"), _to_float, 30.0,
           "Seconds a silent worker (event loop blocked, or still loading the app) lives before "
           "it is killed and replaced; 0 disables.",
           validate=_at_least(0), metavar="SECONDS", section="workers"),
    Option("graceful_timeout", ("--graceful-timeout",), _to_float, 30.0,
           "Seconds workers get to finish in-flight requests on TERM, INT or HUP before SIGKILL.",
           validate=_at_least(0), metavar="SECONDS", section="workers"),
    Option("keepalive", ("--keep-alive",), _to_float, 5.0,
           "Seconds an idle keep-alive connection is kept open; 0 closes every connection "
           "after its response.",
           validate=_at_least(0), metavar="SECONDS", maps_to="keepalive_timeout"),
    Option("header_timeout", ("--header-timeout",), _to_float, 10.0,
           "Seconds from a request's first byte to the end of its head (408 beyond; slowloris).",
           validate=_positive, metavar="SECONDS", maps_to="header_timeout"),
    Option("body_timeout", ("--body-timeout",), _to_float, 30.0,
           "Seconds a request body may go without new bytes (408 beyond).",
           validate=_positive, metavar="SECONDS", maps_to="body_timeout"),
    Option("send_timeout", ("--send-timeout",), _to_float, 30.0,
           "Seconds a response may make no progress before the connection is closed.",
           validate=_positive, metavar="SECONDS", maps_to="send_timeout"),
    Option("preload", ("--preload",), _to_bool, False,
           "Load the app in the manager before forking workers (faster boot, shared memory; "
           "HUP then cannot pick up new code).", kind="flag", section="workers"),
    Option("log_level", ("--log-level",), lambda v: _to_str(v).lower(), "info",
           "Error log level: debug, info, warning, error or critical.",
           validate=_choice(*LOG_LEVELS), metavar="LEVEL", section="logging"),
    Option("error_logfile", ("--error-logfile", "--log-file"), _to_str, "-",
           "Error log file; '-' is stderr.", metavar="FILE", section="logging"),
    Option("access_logfile", ("--access-logfile",), _to_opt_str, None,
           "Access log file; '-' is stdout. No access log by default.",
           metavar="FILE", section="logging"),
    Option("access_logformat", ("--access-logformat",), _to_str, DEFAULT_ACCESS_LOG_FORMAT,
           "Access log line format, as gunicorn's: atoms h l u t r m U q H s B b f a T D M L p "
           "and {header}i {header}o {variable}e.",
           validate=_check_format, metavar="FORMAT", section="logging"),
    Option("limit_request_line", ("--limit-request-line",), _to_int, 8192,
           "Longest request line, in bytes (414 beyond).",
           validate=_between(1, 1 << 20), metavar="BYTES", section="limits", maps_to="max_request_line"),
    Option("limit_request_fields", ("--limit-request-fields",), _to_int, 100,
           "Most header fields in a request (431 beyond).",
           validate=_between(1, 10000), metavar="INT", section="limits", maps_to="max_headers"),
    Option("limit_request_field_size", ("--limit-request-field-size",), _to_int, 8192,
           "Longest header field, in bytes (431 beyond).",
           validate=_between(1, 1 << 20), metavar="BYTES", section="limits", maps_to="max_header_size"),
    Option("max_body_size", ("--max-body-size",), _to_int, 104857600,
           "Largest request body, in bytes (413 beyond).",
           validate=_between(1, 1 << 62), metavar="BYTES", section="limits", maps_to="max_body_size"),
    Option("worker_connections", ("--worker-connections",), _to_int, 10000,
           "Most simultaneous client connections per worker; more wait in the listen backlog.",
           validate=_between(1, 1 << 24), metavar="INT", section="limits", maps_to="max_connections"),
    Option("read_size", ("--read-size",), _to_int, 16384,
           "Bytes of room for a connection's reads; a connection whose last wakeup brought "
           "more gets room for that much (up to 256 KiB).",
           validate=_between(1, 1 << 24), metavar="BYTES", section="limits", maps_to="read_size"),
    Option("send_high_water", ("--send-high-water",), _to_int, 1048576,
           "Queued response bytes past which a connection stops being read and a streaming "
           "response pauses (backpressure).",
           validate=_between(1, 1 << 32), metavar="BYTES", section="limits", maps_to="send_high_water"),
    Option("busy_poll", ("--busy-poll",), _to_float, 0.0,
           "Seconds the event loop keeps polling without sleeping after input arrived "
           "(lower latency for one busy CPU; 0: off, at most 0.01).",
           validate=_between(0, 0.01), metavar="SECONDS", section="workers", maps_to="busy_poll"),
    Option("forwarded_allow_ips", ("--forwarded-allow-ips",), _to_str, _default_forwarded,
           "Proxies (addresses or ADDRESS/BITS networks, comma-separated; * for any) whose "
           "X-Forwarded-Proto, X-Forwarded-Protocol or X-Forwarded-Ssl header sets "
           "wsgi.url_scheme; a Unix socket peer counts as one. Default $FORWARDED_ALLOW_IPS, or 127.0.0.1,::1.",
           validate=_check_proxies, metavar="ADDRESSES", maps_to="forwarded_allow_ips"),
    Option("script_name", ("--script-name",), _to_str, _default_script_name,
           "The path the app is mounted at (SCRIPT_NAME); a request path under it has it removed "
           "in PATH_INFO; a path outside it gets an empty SCRIPT_NAME. Default $SCRIPT_NAME, or none.",
           validate=_check_script_name, metavar="PATH", maps_to="script_name"),
    Option("backlog", ("--backlog",), _to_int, 2048,
           "Listen queue length of each listening socket.",
           validate=_between(1, 65535), metavar="INT", maps_to="backlog"),
    Option("ws_max_message", ("--ws-max-message",), _to_int, 16777216,
           "Largest WebSocket message, in bytes after inflating (close 1009 beyond).",
           validate=_between(1, 1 << 40), metavar="BYTES", section="websocket", maps_to="ws_max_message"),
    Option("ws_idle_timeout", ("--ws-idle-timeout",), _to_float, 300.0,
           "Seconds a WebSocket may stay silent before it is closed (1001).",
           validate=_positive, metavar="SECONDS", section="websocket", maps_to="ws_idle_timeout"),
    Option("ws_ping_interval", ("--ws-ping-interval",), _to_float, 0.0,
           "Seconds of silence after which the server pings a WebSocket (0: never).",
           validate=_at_least(0), metavar="SECONDS", section="websocket", maps_to="ws_ping_interval"),
    Option("ws_ping_timeout", ("--ws-ping-timeout",), _to_float, 20.0,
           "Seconds to wait for the answer to a keep-alive ping before closing.",
           validate=_positive, metavar="SECONDS", section="websocket", maps_to="ws_ping_timeout"),
    Option("ws_send_limit", ("--ws-send-limit",), _to_int, 16777216,
           "Bytes queued for a WebSocket peer beyond which sending fails (backpressure).",
           validate=_between(1, 1 << 40), metavar="BYTES", section="websocket", maps_to="ws_send_limit"),
    Option("ws_no_deflate", ("--ws-no-deflate",), _to_bool, False,
           "Do not negotiate permessage-deflate.", kind="flag", section="websocket"),
    Option("reuse_port", ("--reuse-port",), _to_bool, False,
           "Set SO_REUSEPORT on the listening sockets.", kind="flag"),
    Option("certfile", ("--certfile",), _to_opt_str, None,
           "PEM certificate (chain) file: binds without http:// then speak TLS (HTTPS).",
           validate=_nonempty_str, metavar="FILE", section="tls", maps_to='tls["certfile"]'),
    Option("keyfile", ("--keyfile",), _to_opt_str, None,
           "PEM private key file. Default: the key is in --certfile.",
           validate=_nonempty_str, metavar="FILE", section="tls", maps_to='tls["keyfile"]'),
    Option("keyfile_password", (), _to_opt_str, None,
           "Passphrase of an encrypted --keyfile (and --sni-cert keys). No flag: a command line "
           "shows in ps.", section="tls", maps_to='tls["password"]', secret=True),
    Option("ca_certs", ("--ca-certs",), _to_opt_str, None,
           "PEM CA bundle that client certificates are verified against (see --cert-reqs).",
           validate=_nonempty_str, metavar="FILE", section="tls", maps_to='tls["ca_certs"]'),
    Option("cert_reqs", ("--cert-reqs",), _to_cert_reqs, "none",
           "Client certificates: none (not asked for), optional (verified if sent) or required; "
           "also gunicorn's 0, 1, 2. optional and required need --ca-certs.",
           metavar="REQS", section="tls", maps_to='tls["cert_reqs"]'),
    Option("ciphers", ("--ciphers",), _to_opt_str, None,
           "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's). Default: OpenSSL's.",
           validate=_nonempty_str, metavar="CIPHERS", section="tls", maps_to='tls["ciphers"]'),
    Option("tls_min_version", ("--tls-min-version",), _to_tls_version, "1.2",
           "Oldest TLS version accepted: 1.2 or 1.3.",
           metavar="VERSION", section="tls", maps_to='tls["min_version"]'),
    Option("sni_cert", ("--sni-cert",), _to_sni_list, None,
           "Another certificate, CERT[,KEY], served to clients whose SNI name it covers; repeat "
           "for several (in a variable: separated by spaces).",
           validate=_check_sni, metavar="CERT[,KEY]", kind="append", section="tls",
           maps_to='tls["sni"]'),
    Option("check_config", ("--check-config",), _to_bool, False,
           "Load the config and the app and open the log files, then exit (0 if all are good).",
           kind="flag", section="actions"),
    Option("print_config", ("--print-config",), _to_bool, False,
           "Print the resolved settings and exit.", kind="flag", section="actions"),
    Option("version", ("--version",), _to_bool, False,
           "Print the version and exit.", kind="flag", section="actions"),
]

BY_NAME = {o.name: o for o in OPTIONS}
# Options that make sense only on the command line (not in a file or the environment).
CLI_ONLY = {"check_config", "print_config", "version", "config"}


class Settings:
    """The resolved settings: attribute per option, plus where each came from."""

    def __init__(self, values, sources):
        self.__dict__.update(values)
        self._sources = sources

    def source(self, name):
        """'command line', 'environment (YIMMO_X)', 'config file (F)' or 'default'."""
        return self._sources.get(name, "default")

    def as_dict(self):
        return {o.name: getattr(self, o.name) for o in OPTIONS}

    @property
    def binds(self):
        """The parsed binds, each with .tls resolved against certfile."""
        out = []
        for spec in self.bind:
            b = parse_bind(spec)
            b.tls = b.uses_tls(self.certfile)
            out.append(b)
        return out

    def name_of(self, name):
        """How the user spelled the setting: --flag, YIMMO_VAR or the file key."""
        o = BY_NAME[name]
        src = self.source(name)
        if src == "environment":
            return o.env
        if src == "config file":
            return "%s (config file %s)" % (name, self.config)
        return o.flags[-1] if o.flags else name


# --- TLS ----------------------------------------------------------------------

_TLS_OPTIONS = ("keyfile", "keyfile_password", "ca_certs", "cert_reqs", "ciphers", "tls_min_version",
                "sni_cert")


def tls_config(settings):
    """The tls= dict for yimmo.WSGIServer, or None without --certfile.

    ConfigError (one line, naming the setting) when TLS options do not fit
    together. The files themselves are checked by yimmo.check_tls().
    """
    s = settings
    if s.certfile is None:
        for spec in s.bind:
            if parse_bind(spec).scheme == "https":
                raise ConfigError("an https:// bind needs --certfile (%s %s)"
                                  % (s.name_of("bind"), spec))
        for name in _TLS_OPTIONS:
            # A default written out (--print-config's output as a file) is no request.
            value = getattr(s, name)
            if s.source(name) != "default" and value is not None and value != BY_NAME[name].default:
                raise ConfigError("%s needs --certfile" % (s.name_of(name),))
        return None
    if s.cert_reqs != "none" and s.ca_certs is None:
        raise ConfigError("%s %s needs --ca-certs (the CAs that client certificates are "
                          "verified against)" % (s.name_of("cert_reqs"), s.cert_reqs))
    tls = {"certfile": s.certfile, "cert_reqs": s.cert_reqs, "min_version": s.tls_min_version}
    if s.keyfile is not None:
        tls["keyfile"] = s.keyfile
    if s.keyfile_password is not None:
        tls["password"] = s.keyfile_password
    if s.ca_certs is not None:
        tls["ca_certs"] = s.ca_certs
    if s.ciphers is not None:
        tls["ciphers"] = s.ciphers
    if s.sni_cert:
        tls["sni"] = []
        for item in s.sni_cert:
            cert, key = parse_sni(item)
            entry = {"certfile": cert}
            if key is not None:
                entry["keyfile"] = key
            if s.keyfile_password is not None:
                entry["password"] = s.keyfile_password
            tls["sni"].append(entry)
    return tls


# --- Command line -------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError("%s (see --help)" % (message,))


def build_parser(prog="yimmo-wsgi"):
    no_flag = " ".join("%s (file key %s): %s" % (o.env, o.name, o.help)
                       for o in OPTIONS if o.no_flag)
    p = _Parser(
        prog=prog, add_help=True,
        usage="%(prog)s [OPTIONS] [APP]",
        description="Serve a WSGI application with yimmo.",
        epilog="Every option is also an environment variable (YIMMO_ + its name in capitals, "
               "e.g. YIMMO_WORKERS) and a key of the config file. Precedence: command line > "
               "environment > config file > default. Only in the environment or the config "
               "file: " + no_flag,
        argument_default=argparse.SUPPRESS)
    p.add_argument("app", nargs="?", metavar="APP",
                   help=BY_NAME["app"].help + " [%s]" % BY_NAME["app"].env)
    for o in OPTIONS:
        if not o.flags:
            continue
        env = "" if o.name in CLI_ONLY and o.name != "config" else " [%s]" % o.env
        if o.kind == "flag":
            p.add_argument(*o.flags, dest=o.name, action="store_const", const=True,
                           help=o.help + env)
        elif o.kind == "append":
            p.add_argument(*o.flags, dest=o.name, action="append", metavar=o.metavar,
                           help=o.help + env)
        else:
            p.add_argument(*o.flags, dest=o.name, metavar=o.metavar, help=o.help + env)
    return p


def _flag_name(o):
    return "/".join(o.flags) if o.flags else o.name


# --- Config file --------------------------------------------------------------

def read_file(path):
    """The raw {option name: value} of a TOML file; ConfigError if unreadable or unknown keys."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config file %s: not found" % (path,)) from None
    except OSError as e:
        raise ConfigError("config file %s: %s" % (path, e.strerror or e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config file %s: invalid TOML: %s" % (path, e)) from None
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in BY_NAME or name in CLI_ONLY:
            raise ConfigError("config file %s: unknown option %r" % (path, key))
        out[name] = value
    return out


# --- Resolution ----------------------------------------------------------------

def load(argv=None, environ=None, prog="yimmo-wsgi"):
    """Resolve the settings from argv, environ and the config file; ConfigError if bad."""
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    cli = vars(build_parser(prog).parse_args(argv))

    values, sources = {}, {}
    # 1. Defaults; those read from the environment ($PORT, $WEB_CONCURRENCY)
    # only once nothing else set the option, below.
    for o in OPTIONS:
        values[o.name] = None if callable(o.default) else o.default

    # 2. Config file: -c beats YIMMO_CONFIG.
    path = cli.get("config")
    where = "command line"
    if path is None and environ.get(BY_NAME["config"].env):
        path = environ[BY_NAME["config"].env]
        where = "environment (%s)" % BY_NAME["config"].env
    if path is not None:
        values["config"], sources["config"] = path, where
        for name, raw in read_file(path).items():
            o = BY_NAME[name]
            try:
                values[name] = o.check(raw)
            except ValueError as e:
                raise ConfigError("config file %s: %s: %s" % (path, name, e)) from None
            sources[name] = "config file"

    # 3. Environment.
    for o in OPTIONS:
        if o.name in CLI_ONLY:
            continue
        raw = environ.get(o.env)
        if raw is None or (raw == "" and o.kind != "flag"):
            continue
        try:
            values[o.name] = o.check(raw)
        except ValueError as e:
            raise ConfigError("%s: %s" % (o.env, e)) from None
        sources[o.name] = "environment"

    # 4. Command line.
    for name, raw in cli.items():
        if name == "config":
            continue
        o = BY_NAME[name]
        try:
            values[name] = o.check(raw)
        except ValueError as e:
            raise ConfigError("%s: %s" % (_flag_name(o), e)) from None
        sources[name] = "command line"

    for o in OPTIONS:
        if sources.get(o.name) is None and callable(o.default):
            values[o.name] = o.default(environ)

    # Defaults are checked too: a bad $PORT must not slip through.
    for o in OPTIONS:
        if sources.get(o.name) is None and o.validate is not None and values[o.name] is not None:
            try:
                o.validate(values[o.name])
            except ValueError as e:
                raise ConfigError("default %s: %s" % (o.name, e)) from None
    return Settings(values, sources)


def format_settings(settings):
    """The resolved settings as TOML lines (what --print-config shows)."""
    lines = []
    for o in OPTIONS:
        if o.name in ("check_config", "print_config", "version"):
            continue
        v = getattr(settings, o.name)
        if o.name == "config":  # Not a file key: shown for information.
            lines.append("# config = %s  # %s" % (_toml_value(v) if v else "(none)", settings.source(o.name)))
            continue
        if v is not None and o.secret:
            # Commented out: "***" read back as a config file would be a wrong password.
            lines.append('# %s = "***"  # %s (hidden)' % (o.name, settings.source(o.name)))
            continue
        lines.append("%s = %s  # %s" % (o.name, _toml_value(v), settings.source(o.name))
                     if v is not None else "# %s = (unset)" % o.name)
    return "\n".join(lines)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return '"%s"' % s


def options_table():
    """A Markdown table of every option (docs/wsgi.md embeds this)."""
    rows = ["| option (file key) | flags | environment | default | what |",
            "| --- | --- | --- | --- | --- |"]
    for o in OPTIONS:
        if o.name == "bind":
            default = "`127.0.0.1:8000`, or `0.0.0.0:$PORT`"
        elif o.name == "workers":
            default = "`$WEB_CONCURRENCY` or 1"
        elif o.name == "forwarded_allow_ips":
            default = "`$FORWARDED_ALLOW_IPS` or `127.0.0.1,::1`"
        elif o.name == "script_name":
            default = "`$SCRIPT_NAME` or none"
        else:
            d = o.default
            default = "none" if d is None else "`%s`" % (
                _toml_value(d) if not isinstance(d, str) else d.replace("|", "\\|"))
        if o.kind == "positional":
            flags = "positional"
        else:
            flags = ", ".join("`%s`" % f for f in o.flags) or "none (environment or file only)"
        env = "" if o.name in CLI_ONLY and o.name != "config" else "`%s`" % o.env
        what = o.help.replace("|", "\\|")
        if o.maps_to:
            # A keyword (threads=) or an item of the tls dict (tls["certfile"]).
            what += " (WSGIServer `%s%s`)" % (o.maps_to, "" if "[" in o.maps_to else "=")
        rows.append("| `%s` | %s | %s | %s | %s |" % (o.name, flags, env, default, what))
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m yimmo.config` prints the table docs/wsgi.md embeds.
    print(options_table())

"""The `yimmo-wsgi` manager: binds the sockets, forks workers, watches them.

One manager process (the arbiter) binds every listening socket, then forks
`workers` processes that share them; each worker loads the app (after the
fork unless --preload), builds a `yimmo.WSGIServer` on the inherited sockets
and runs it. Even with one worker the app runs in a forked child, so that
--timeout, restarts and the signals below behave the same for every count.

Signals to the manager (as gunicorn):
  TERM, INT   graceful stop: workers finish in-flight requests within
              --graceful-timeout, then are killed; exit 0. A second INT or
              a QUIT while draining makes it fast.
  QUIT        fast stop: workers close everything at once.
  HUP         re-read the configuration, start new workers; each old worker
              is stopped gracefully as a new one is ready. If a new worker
              cannot load the app the old ones keep serving. New workers
              load the certificate files afresh (--certfile etc.), so a
              HUP after renewing them serves the new ones; connections
              open on old workers finish with the old.
  TTIN/TTOU   one worker more / one fewer (never below 1).
  USR1        reopen the log files (after logrotate moved them).
  CHLD        a worker exited: it is replaced unless shutting down.

Signals to a worker: TERM or INT drain gracefully (a second INT is fast),
QUIT stops at once, USR1 reopens its log files.

Liveness: each worker's event loop stamps the monotonic time into a shared
page every tick (WSGIServer's on_tick); a worker whose stamp is older than
--timeout (loop blocked by the app, or app import hung) is sent SIGKILL,
logged as "WORKER TIMEOUT (pid:N)", and replaced.

Workers tell the manager over a pipe when they are ready to serve, or why
they could not load the app: the startup lines are held until the first
worker is ready, so a bad app name costs the user one line, not a log.
"""
import errno
import logging
import mmap
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time

from . import __version__, config

log = logging.getLogger("yimmo.arbiter")

# Exit statuses of the manager (main() returns them).
EXIT_OK = 0
EXIT_ERROR = 1          # could not bind, or a runtime failure
EXIT_USAGE = 2          # bad config or app (first boot)
EXIT_BOOT_ERROR = 3     # a replacement worker could not load the app

# A worker's exit status when it could not load the app (it has told the
# manager why over the status pipe first).
WORKER_BOOT_ERROR = 3

# After QUIT a worker whose app still holds the loop thread exits this many
# seconds later, without waiting for it.
QUIT_GRACE = 1.0

_HANDLED = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
            signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH]
_SIGNAMES = {getattr(signal, n): n[3:].lower() for n in dir(signal)
             if n.startswith("SIG") and not n.startswith("SIG_") and isinstance(getattr(signal, n), int)}


def _server_class():
    import yimmo
    return yimmo.WSGIServer


class BindError(Exception):
    """A listening socket could not be made; the message is one line."""


# --- Logging ------------------------------------------------------------------

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S %z"


class _ReopenableHandler(logging.StreamHandler):
    """A stream handler on '-' (stderr) or a file that USR1 can reopen."""

    def __init__(self, path, std):
        self.path = path
        self.std = std
        super().__init__(self._open())

    def _open(self):
        if self.path in (None, "-"):
            return self.std
        return open(self.path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def reopen(self):
        if self.path in (None, "-"):
            return
        new = self._open()
        old = self.setStream(new)
        if old is not None and old is not self.std:
            old.close()

    def close(self):
        try:
            if self.stream is not None and self.stream is not self.std:
                self.stream.close()
        finally:
            super().close()


class _ErrorStream:
    """wsgi.errors: text the application writes goes to the error log's
    stream as it is (the file --error-logfile names, reopened on USR1)."""

    def __init__(self, logs):
        self._logs = logs

    def write(self, s):
        h = self._logs.error_handler
        if h is None:
            return sys.stderr.write(s)
        with h.lock:
            return h.stream.write(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        h = self._logs.error_handler
        if h is None:
            sys.stderr.flush()
        else:
            h.flush()


class Logs:
    """The error log (the `yimmo` logger, which the C engine also uses) and the access log."""

    def __init__(self):
        self.error_handler = None
        self.access = None
        self.errors = _ErrorStream(self)    # wsgi.errors: into the error log

    def setup(self, settings):
        """(Re)configure from settings; files that cannot be opened raise OSError."""
        new_handler = _ReopenableHandler(settings.error_logfile, sys.stderr)
        new_handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
        new_access = None
        if settings.access_logfile:
            new_access = AccessLog(settings.access_logformat, settings.access_logfile)
        root = logging.getLogger("yimmo")
        if self.error_handler is not None:
            root.removeHandler(self.error_handler)
            self.error_handler.close()
        if self.access is not None:
            self.access.close()
        root.addHandler(new_handler)
        root.setLevel(settings.log_level.upper())
        root.propagate = False
        self.error_handler, self.access = new_handler, new_access

    def reopen(self):
        """USR1: reopen both files. One that cannot be opened (its directory
        gone) keeps its old file, and says so in the error log."""
        for what in (self.error_handler, self.access):
            if what is not None:
                try:
                    what.reopen()
                except OSError as e:
                    log.error("Reopen: cannot open log file %s, keeping the old one: %s",
                              e.filename, e.strerror or e)


class AccessLog:
    """Formats one line per response, gunicorn's atoms; called by WSGIServer.

    The format is parsed once; each call computes only the atoms it uses.
    Text atoms are escaped as Apache escapes its logs (a quote as \\", a
    backslash as \\\\, control characters as \\xHH), so a client cannot end a
    quoted field or start a line. Each line is one write(), unbuffered: it
    is out when the response is, and lines from several workers do not mix
    (up to PIPE_BUF, 4096 bytes, on a pipe).
    """

    def __init__(self, fmt, path):
        self.fmt = fmt
        self.path = path
        self.lock = threading.Lock()  # With --threads, responses finish on several threads.
        self.fd = self._open()
        self.getters = [(n, self._getter(n)) for n in sorted(config.format_atoms(fmt))]

    def _open(self):
        if self.path == "-":
            fd = sys.stdout.fileno() if sys.stdout is not None else -1
            try:
                os.fstat(fd)
            except (OSError, ValueError):
                raise OSError(errno.EBADF, "standard output is closed", "-") from None
            return fd
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def reopen(self):
        if self.path == "-":
            return
        new = self._open()
        with self.lock:
            old, self.fd = self.fd, new
        os.close(old)

    def close(self):
        if self.path != "-":
            os.close(self.fd)

    def __call__(self, environ, status_line, headers, body_bytes, duration):
        atoms = {}
        for name, get in self.getters:
            try:
                v = get(environ, status_line, headers, body_bytes, duration)
            except Exception:
                v = None
            if v is None:
                v = "-"
            elif type(v) is str and _UNSAFE.search(v):
                v = v.translate(_ESCAPES)
            atoms[name] = v
        data = (self.fmt % atoms + "\n").encode("utf-8", "backslashreplace")
        try:
            with self.lock:
                while data:
                    data = data[os.write(self.fd, data):]
        except OSError:
            pass  # A full disk or a closed pipe must not fail the response.

    @staticmethod
    def _getter(name):
        if len(name) > 3 and name[0] == "{" and name[-2] == "}":
            key, kind = name[1:-2], name[-1]
            if kind == "i":
                k = key.upper().replace("-", "_")
                if k not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                    k = "HTTP_" + k
                return lambda e, s, h, b, d: e.get(k)
            if kind == "o":
                low = key.lower()
                return lambda e, s, h, b, d: next((v for n, v in h if n.lower() == low), None)
            if kind == "e":
                return lambda e, s, h, b, d: e.get(key, e.get(key.upper()))
        return _ATOMS.get(name, lambda e, s, h, b, d: None)


# What str.splitlines() would break a line at, or a terminal would act on:
# C0, DEL, C1 (NEL among them) and the Unicode line and paragraph separators.
_UNSAFE = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029"\\\\]')
_ESCAPES = {c: "\\x%02x" % c for c in [*range(0x20), *range(0x7f, 0xa0)]}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029", ord('"'): '\\"', ord("\\"): "\\\\"})


def _user(environ):
    # The user name of Basic credentials, UTF-8 as gunicorn reads it (RFC 7617).
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "basic ":
        import base64
        try:
            raw = base64.b64decode(auth[6:].strip().encode("latin-1"))
            return raw.split(b":", 1)[0].decode("utf-8")
        except Exception:
            return None
    return None


def _request_line(e):
    uri = e.get("RAW_URI")
    if uri is None:
        uri = e.get("PATH_INFO", "")
        if e.get("QUERY_STRING"):
            uri += "?" + e["QUERY_STRING"]
    return "%s %s %s" % (e.get("REQUEST_METHOD", "-"), uri, e.get("SERVER_PROTOCOL", "-"))


_ATOMS = {
    "h": lambda e, s, h, b, d: e.get("REMOTE_ADDR") or None,    # "" on a unix socket
    "l": lambda e, s, h, b, d: "-",
    "u": lambda e, s, h, b, d: _user(e),
    "t": lambda e, s, h, b, d: time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(time.time() - d)),
    "r": lambda e, s, h, b, d: _request_line(e),
    "m": lambda e, s, h, b, d: e.get("REQUEST_METHOD"),
    "U": lambda e, s, h, b, d: e.get("PATH_INFO"),
    "q": lambda e, s, h, b, d: e.get("QUERY_STRING"),
    "H": lambda e, s, h, b, d: e.get("SERVER_PROTOCOL"),
    "s": lambda e, s, h, b, d: s.split(None, 1)[0],
    "B": lambda e, s, h, b, d: b,
    "b": lambda e, s, h, b, d: str(b),
    "f": lambda e, s, h, b, d: e.get("HTTP_REFERER"),
    "a": lambda e, s, h, b, d: e.get("HTTP_USER_AGENT"),
    "T": lambda e, s, h, b, d: int(d),
    "M": lambda e, s, h, b, d: int(d * 1000),
    "D": lambda e, s, h, b, d: int(d * 1000000),
    "L": lambda e, s, h, b, d: "%.6f" % d,
    "p": lambda e, s, h, b, d: "<%d>" % os.getpid(),
}


# --- Listening sockets ----------------------------------------------------------

class Listener:
    """A bound, listening socket made by the manager and shared by the workers.

    tls (from the bind, fixed for the manager's life) says whether the
    workers speak TLS on it.
    """

    def __init__(self, bind, sock, unlink_path=None):
        self.bind = bind
        self.sock = sock
        self.tls = bool(getattr(bind, "tls", False))
        self.unlink_path = unlink_path   # a unix socket file we created
        self.inode = None
        if unlink_path is not None:
            try:
                self.inode = os.stat(unlink_path).st_ino
            except OSError:
                pass

    def url(self):
        family = self.sock.family
        if family == socket.AF_UNIX:
            return "%sunix:%s" % ("https+" if self.tls else "", self.sock.getsockname() or self.bind.path)
        host, port = self.sock.getsockname()[:2]
        if family == socket.AF_INET6:
            host = "[%s]" % host
        return "%s://%s:%d" % ("https" if self.tls else "http", host, port)

    def close(self):
        self.sock.close()
        if self.unlink_path is not None:
            # Only remove the file if it is still ours (not a successor's).
            try:
                if os.stat(self.unlink_path).st_ino == self.inode:
                    os.unlink(self.unlink_path)
            except OSError:
                pass


def bind_all(binds, backlog, reuse_port):
    """A Listener per parsed bind; BindError (with every socket closed) on failure."""
    out = []
    try:
        for b in binds:
            out.append(_bind_one(b, backlog, reuse_port))
    except BaseException:
        for l in out:
            l.close()
        raise
    return out


def _bind_one(b, backlog, reuse_port):
    if b.kind == "fd":
        try:
            sock = socket.socket(fileno=b.fd)
        except OSError as e:
            raise BindError("%s: %s" % (b.spec, e.strerror or e)) from None
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise BindError("%s: not a stream socket" % (b.spec,))
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.listen(backlog)
        return Listener(b, sock)
    if b.kind == "unix":
        path = b.path
        _clear_stale_unix_socket(b.spec, path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except OSError as e:
            sock.close()
            raise BindError("could not bind to %s: %s" % (b.spec, e.strerror or e)) from None
        return Listener(b, sock, unlink_path=path)
    try:
        infos = socket.getaddrinfo(b.host, b.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError("could not resolve %s: %s" % (b.spec, e.strerror or e)) from None
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BindError("could not bind to %s: %s" % (b.spec, e.strerror or e)) from None
    return Listener(b, sock)


def _clear_stale_unix_socket(spec, path):
    """Remove a socket file no one listens on; refuse to touch anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise BindError("could not bind to %s: %s" % (spec, e.strerror or e)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError("could not bind to %s: %s exists and is not a socket" % (spec, path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # Nobody listens: a leftover from a crashed server.
        except FileNotFoundError:
            pass
        return
    except (BlockingIOError, TimeoutError):
        pass    # Someone listens, with a full backlog.
    except OSError as e:
        raise BindError("could not bind to %s: %s" % (spec, e.strerror or e)) from None
    finally:
        probe.close()
    raise BindError("could not bind to %s: another server is listening there" % (spec,))


# --- Workers ----------------------------------------------------------------------

class Worker:
    """The manager's record of one worker process."""

    def __init__(self, gen, age):
        self.gen = gen              # configuration generation (HUP increments)
        self.age = age              # spawn order, for "retire the oldest"
        self.pid = None
        self.ready = False
        self.retiring = None        # monotonic time TERM was sent to retire it
        self.killed = False         # sent SIGKILL by us (timeout or shutdown)
        self.beat = mmap.mmap(-1, 8)  # shared: the worker stamps time.monotonic() here
        self.stamp()

    def stamp(self):
        struct.pack_into("d", self.beat, 0, time.monotonic())

    def last_beat(self):
        return struct.unpack_from("d", self.beat, 0)[0]


class WorkerProcess:
    """Runs in the forked child: load the app, serve, exit. Never returns."""

    def __init__(self, arbiter, worker):
        self.arbiter = arbiter
        self.worker = worker
        self.settings = arbiter.settings
        self.srv = None
        self.stopping = False
        self.exiting = False
        self.exiting_process = False
        self.reopen_requested = False

    def run(self):
        status = 1
        try:
            try:
                status = self._run()
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 0
            except KeyboardInterrupt:
                status = 0
            except BaseException:
                log.exception("Worker (pid:%d) failed", os.getpid())
                status = 1
            self.exiting_process = True  # From here on a signal handler raises nothing.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            # Whatever happens above (even a signal during the flush), this
            # process never returns into the manager's code.
            os._exit(status)

    def _report(self, line):
        msg = line.replace("\n", " ").encode("utf-8", "backslashreplace")[:select.PIPE_BUF - 16]
        try:
            os.write(self.arbiter.status_w, msg + b"\n")
        except OSError:
            pass

    def _run(self):
        a = self.arbiter
        for sig in _HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)
        signal.signal(signal.SIGQUIT, self._on_quit)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        os.close(a.wake_r)
        os.close(a.wake_w)
        os.close(a.status_r)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)

        app = a.app
        if app is None:
            try:
                app = a.loader()
            except a.app_error as e:
                if self.stopping:
                    return 0    # TERM, INT or QUIT while importing (TTOU, a reload): not the app's fault
                self._report("E %d %s" % (os.getpid(), e))
                return WORKER_BOOT_ERROR
        s = self.settings
        try:
            tls = config.tls_config(s)  # The manager checked it; reported like any boot failure.
        except config.ConfigError as e:
            self._report("E %d %s" % (os.getpid(), e))
            return WORKER_BOOT_ERROR
        if tls is None and not any(l.tls for l in a.listeners):
            socks = [l.sock for l in a.listeners]
        else:
            socks = [(l.sock, l.tls) for l in a.listeners]
        kw = dict(
            sock=socks,
            backlog=s.backlog,
            keepalive_timeout=s.keepalive,
            header_timeout=s.header_timeout,
            body_timeout=s.body_timeout,
            send_timeout=s.send_timeout,
            max_body_size=s.max_body_size,
            max_connections=s.worker_connections,
            read_size=s.read_size,
            ws_max_message=s.ws_max_message,
            ws_idle_timeout=s.ws_idle_timeout,
            ws_ping_interval=s.ws_ping_interval,
            ws_ping_timeout=s.ws_ping_timeout,
            ws_send_limit=s.ws_send_limit,
            ws_deflate=not s.ws_no_deflate,
            send_high_water=s.send_high_water,
            busy_poll=s.busy_poll,
            max_request_line=s.limit_request_line,
            max_headers=s.limit_request_fields,
            max_header_size=s.limit_request_field_size,
            multiprocess=a.num_workers > 1,
            access_log=a.logs.access,
            errors=a.logs.errors,
            forwarded_allow_ips=s.forwarded_allow_ips,
            script_name=s.script_name,
        )
        beat, pack, now = self.worker.beat, struct.pack_into, time.monotonic

        manager = a.pid

        def tick():
            # On the loop thread: the heartbeat, and a USR1's log reopen
            # (done here rather than in the signal handler, which may have
            # interrupted a write to the very file it would close).
            pack("d", beat, 0, now())
            if self.reopen_requested:
                self.reopen_requested = False
                a.logs.reopen()
            if os.getppid() != manager and not self.stopping:
                # The manager is gone (SIGKILL, OOM): an orphan would hold
                # the port against the next start.
                log.warning("Manager (pid:%d) is gone; worker stopping (pid: %d)", manager, os.getpid())
                self._stop(self.settings.graceful_timeout)
        kw["on_tick"] = tick
        kw["tick_interval"] = max(0.05, min(1.0, s.timeout / 4.0)) if s.timeout > 0 else 1.0
        if s.threads:
            kw["threads"] = s.threads
        if tls is not None:
            kw["tls"] = tls
        cls = _server_class()
        try:
            self.srv = cls(app, **kw)
        except TypeError as e:
            if s.threads and "threads" in str(e):
                self._report("E %d --threads is not supported by this yimmo build (%s)"
                             % (os.getpid(), e))
            else:
                self._report("E %d could not start the server: %s" % (os.getpid(), e))
            return WORKER_BOOT_ERROR
        except (ValueError, OSError) as e:
            self._report("E %d could not start the server: %s" % (os.getpid(), e))
            return WORKER_BOOT_ERROR
        # The server holds its own copies of the listening sockets, and
        # closes them when it stops: drop the inherited ones, so that once
        # every process has stopped, new connections are refused rather
        # than left in the backlog.
        for l in a.listeners:
            l.sock.close()
        self.worker.stamp()
        self._report("R %d" % os.getpid())
        if self.stopping:  # TERM arrived while loading the app.
            return 0
        self.srv.run()
        log.info("Worker exiting (pid: %d)", os.getpid())
        return 0

    def _stop(self, timeout):
        self.stopping = True
        if self.srv is None:
            if not self.exiting_process:
                self.exiting_process = True
                raise SystemExit(0)  # Still loading the app: nothing in flight.
            return
        self.srv.stop(timeout)

    def _stop_now(self):
        """Close everything; if the app holds the loop thread, exit anyway after a moment."""
        self._stop(0)
        if not self.exiting:
            self.exiting = True
            threading.Thread(target=self._exit_soon, name="yimmo-quit", daemon=True).start()

    @staticmethod
    def _exit_soon():
        time.sleep(QUIT_GRACE)
        os._exit(0)

    def _on_term(self, signum, frame):
        self._stop(self.settings.graceful_timeout)

    def _on_int(self, signum, frame):
        # Ctrl-C reaches the whole process group: drain like TERM, the
        # manager decides; a second INT is the impatient user.
        if self.stopping:
            self._stop_now()
        else:
            self._stop(self.settings.graceful_timeout)

    def _on_quit(self, signum, frame):
        self._stop_now()

    def _on_usr1(self, signum, frame):
        self.reopen_requested = True  # Done by the next tick.


# --- The manager -------------------------------------------------------------------

class Arbiter:
    """The manager process. run() returns the process exit status."""

    def __init__(self, settings, loader, app_error=Exception, reload_settings=None, logs=None):
        self.settings = settings
        self.loader = loader                  # () -> WSGI app; raises app_error
        self.app_error = app_error
        self.reload_settings = reload_settings  # () -> new Settings, for HUP
        self.logs = logs or Logs()
        self.app = None
        self.listeners = []
        self.workers = {}                     # pid -> Worker
        self.exited = {}                      # pid -> Worker: reaped, boot report maybe unread
        self.num_workers = settings.workers
        self.gen = 0
        self.last_gen = 0                     # generations are never reused
        self.spawned = 0
        self.sig_queue = []
        self.held = []                        # startup log lines, until a worker is ready
        self.holding = True
        self.hold_until = 0.0
        self.ever_ready = False
        self.spawn_delay = 0.0                # grows while workers die before they are ready
        self.spawn_after = 0.0                # monotonic time before which none is spawned
        self.reload_from = None               # generation a HUP is replacing
        self.gen_settings = {0: settings}     # generation -> the settings its workers run
        self.gen_workers = {}                 # generation -> the change its reload made to the count
        self.pid = os.getpid()
        self.wake_r = self.wake_w = self.status_r = self.status_w = -1
        self.status_buf = b""
        self.exit_status = EXIT_OK
        self.fatal = None                     # a one-line error to print on the way out

    # -- logging helpers

    def _startup(self, msg, *args):
        if self.holding:
            self.held.append((msg, args))
        else:
            log.info(msg, *args)

    def _release(self):
        if self.holding:
            self.holding = False
            for msg, args in self.held:
                log.info(msg, *args)
            self.held = []

    # -- main

    def run(self):
        s = self.settings
        self.hold_until = time.monotonic() + 2.0
        self._startup("Starting yimmo %s", __version__)
        try:
            self.listeners = bind_all(s.binds, s.backlog, s.reuse_port)
        except BindError as e:
            self.held = []
            self.fatal = str(e)
            return EXIT_ERROR
        try:
            self._startup("Listening at: %s (%d)", ",".join(l.url() for l in self.listeners), self.pid)
            self._startup("Using worker: %s", "yimmo (threads: %d)" % s.threads if s.threads else "yimmo")
            if s.preload:
                try:
                    self.app = self.loader()
                except self.app_error as e:
                    self.held = []
                    self.fatal = str(e)
                    return EXIT_USAGE
            self._init_signals()
            self._loop()
        except KeyboardInterrupt:
            self._shutdown(graceful=True)
        finally:
            self._release_if_not_fatal()
            for l in self.listeners:
                l.close()
            for w in self.workers.values():
                w.beat.close()
            self._restore_signals()
        if self.exit_status == EXIT_OK:
            log.info("Shutting down: Master")
        return self.exit_status

    def _release_if_not_fatal(self):
        if self.fatal is not None and self.exit_status == EXIT_USAGE:
            self.held = []
            self.holding = False
        else:
            self._release()

    def _init_signals(self):
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.status_r, self.status_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(self.status_w, True)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in _HANDLED:
            signal.signal(sig, self._on_signal)

    def _restore_signals(self):
        if self.wake_r < 0:
            return
        signal.set_wakeup_fd(-1)
        for sig in _HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in (self.wake_r, self.wake_w, self.status_r, self.status_w):
            os.close(fd)
        self.wake_r = self.wake_w = self.status_r = self.status_w = -1

    def _on_signal(self, signum, frame):
        if len(self.sig_queue) < 32:
            self.sig_queue.append(signum)

    def _tick(self):
        t = self.settings.timeout
        tick = max(0.05, min(1.0, t / 4.0)) if t > 0 else 1.0
        if self.spawn_after:
            tick = min(tick, max(0.01, self.spawn_after - time.monotonic()))
        return tick

    def _wait(self, timeout):
        try:
            ready, _, _ = select.select([self.wake_r, self.status_r], [], [], max(0.0, timeout))
        except InterruptedError:
            return
        if self.wake_r in ready:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        if self.status_r in ready:
            self._read_status()

    def _read_status(self):
        try:
            while True:
                chunk = os.read(self.status_r, 4096)
                if not chunk:
                    break
                self.status_buf += chunk
        except BlockingIOError:
            pass
        while b"\n" in self.status_buf:
            line, self.status_buf = self.status_buf.split(b"\n", 1)
            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
            pid_s, _, msg = rest.partition(" ")
            try:
                pid = int(pid_s)
            except ValueError:
                continue
            w = self.workers.get(pid)
            if w is None:
                # A worker can write its report and exit between the read
                # before waitpid() and waitpid() itself.
                w = self.exited.pop(pid, None)
            if kind == "R":
                if w is not None:
                    w.ready = True
                    w.stamp()
                log.debug("Worker ready (pid: %d)", pid)
                self.ever_ready = True
                self.spawn_delay = 0.0
                self._release()
            elif kind == "E":
                self._boot_failed(pid, w, msg)

    def _boot_failed(self, pid, w, msg):
        if self._stopping:
            return
        if not self.ever_ready and self.reload_from is None:
            # First boot: the app (or the server options) are wrong.
            self.fatal = msg
            self.exit_status = EXIT_USAGE
            self._shutdown(graceful=False)
            return
        if self.reload_from is not None and w is not None and w.gen == self.gen:
            log.error("Reload failed, keeping the old workers: %s", msg)
            self._abandon_reload()
            return
        if w is not None and w.gen != self.gen:
            return  # Another worker of a reload already abandoned.
        log.error("Worker (pid:%d) failed to boot: %s", pid, msg)
        if any(x.ready and x.retiring is None for x in self.workers.values()):
            # Others serve (a replacement met code broken since they
            # started): keep them, and try again later, not in a loop.
            self.spawn_delay = min(max(self.spawn_delay * 2, 1.0), 30.0)
            self.spawn_after = time.monotonic() + self.spawn_delay
            log.error("Serving with the workers that run; the next one starts in %.1f s",
                      self.spawn_delay)
            return
        self.fatal = "worker failed to boot: %s" % (msg,)
        self.exit_status = EXIT_BOOT_ERROR
        self._shutdown(graceful=True)

    def _abandon_reload(self):
        """A reload's worker could not boot: its generation goes, and the
        workers still serving (of the generation before, or of an earlier
        reload that a second HUP overtook) stay, with their settings."""
        failed = self.gen
        for x in self.workers.values():
            if x.gen == failed:
                self._retire(x, signal.SIGQUIT)
        keep = [x for x in self.workers.values() if x.retiring is None]
        serving = [x.gen for x in keep if x.ready]
        back = max(serving) if serving else self.reload_from
        for x in keep:
            if x.ready:
                x.gen = back
            else:
                self._retire(x, signal.SIGQUIT)   # booting the new code, too
        self.gen = back
        self.reload_from = None
        # The worker count loses what the abandoned reloads changed, and
        # keeps what TTIN and TTOU did.
        undo = sum(self.gen_workers.pop(g) for g in [g for g in self.gen_workers if g > back])
        if undo:
            self.num_workers = max(1, self.num_workers - undo)
        settings = self.gen_settings[back]
        self.gen_settings = {back: settings}
        if settings is not self.settings:
            self.settings = settings
            try:
                self.logs.setup(settings)
            except OSError as e:
                log.error("Reload: cannot reopen the old log files: %s", e)

    def _loop(self):
        self._manage()
        while True:
            self._wait(self._tick())
            if self._stopping:
                return
            if self.holding and time.monotonic() > self.hold_until:
                self._release()
            if self.sig_queue:
                self._release()
            while self.sig_queue:
                sig = self.sig_queue.pop(0)
                if sig != signal.SIGCHLD:
                    log.info("Handling signal: %s", _SIGNAMES.get(sig, sig))
                if self._handle_signal(sig):
                    return
            self._reap()
            if self._stopping:
                return
            self._murder()
            self._manage()

    _stopping = False

    def _handle_signal(self, sig):
        """True when the manager is done."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._shutdown(graceful=True)
            return True
        if sig == signal.SIGQUIT:
            self._shutdown(graceful=False)
            return True
        if sig == signal.SIGHUP:
            self._reload()
        elif sig == signal.SIGTTIN:
            self.num_workers += 1
            log.info("Workers: %d", self.num_workers)
        elif sig == signal.SIGTTOU:
            if self.num_workers > 1:
                self.num_workers -= 1
            log.info("Workers: %d", self.num_workers)
        elif sig == signal.SIGUSR1:
            self.logs.reopen()
            self._kill_all(signal.SIGUSR1)
        return False

    # -- workers

    def _spawn(self):
        w = Worker(self.gen, self.spawned)
        self.spawned += 1
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
            log.error("Could not fork a worker: %s", e)
            w.beat.close()
            return
        if pid == 0:
            self.sig_queue, self.held, self.holding = [], [], False
            WorkerProcess(self, w).run()  # Never returns.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        w.pid = pid
        self.workers[pid] = w
        self._startup("Booting worker with pid: %d", pid)

    def _active(self):
        """Workers of the current generation that are not being retired."""
        return [w for w in self.workers.values() if w.gen == self.gen and w.retiring is None]

    def _manage(self):
        if self._stopping:
            return
        active = sorted(self._active(), key=lambda w: w.age)
        # Too many (TTOU): retire the oldest.
        while len(active) > self.num_workers:
            self._retire(active.pop(0), signal.SIGTERM)
        if self.spawn_after and time.monotonic() >= self.spawn_after:
            self.spawn_after = 0.0
        if not self.spawn_after:
            for _ in range(self.num_workers - len(active)):
                self._spawn()
        # Reload in progress: one old worker leaves per new worker ready.
        # Old ones still booting (of a reload a second HUP overtook) serve
        # nobody: they go at once, and never count as serving.
        if self.reload_from is not None:
            ready = sum(1 for w in self._active() if w.ready)
            old = []
            for w in self.workers.values():
                if w.gen != self.gen and w.retiring is None:
                    if w.ready:
                        old.append(w)
                    else:
                        self._retire(w, signal.SIGQUIT)
            old.sort(key=lambda w: w.age)
            while old and ready + len(old) > self.num_workers:
                self._retire(old.pop(0), signal.SIGTERM)
            if not old:
                self.reload_from = None
                self.gen_settings = {self.gen: self.gen_settings[self.gen]}
                self.gen_workers = {}

    def _retire(self, w, sig):
        if w.retiring is None:
            w.retiring = time.monotonic()
        self._kill(w, sig)

    def _kill(self, w, sig):
        try:
            os.kill(w.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_all(self, sig):
        for w in list(self.workers.values()):
            self._kill(w, sig)

    def _reap(self):
        # A worker writes its boot report before it exits: read reports
        # first, so a boot failure is never mistaken for a plain death.
        if self.status_r >= 0:
            self._read_status()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            self.exited[pid] = w
            while len(self.exited) > 64:
                del self.exited[next(iter(self.exited))]
            w.beat.close()
            if not w.ready and not w.killed and w.retiring is None and not self._stopping:
                if self._died_booting(pid, w, status):
                    continue
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                if sig == signal.SIGKILL and not w.killed:
                    log.error("Worker (pid:%d) was sent SIGKILL! Perhaps out of memory?", pid)
                elif not w.killed:
                    log.error("Worker (pid:%d) was sent %s!", pid, _SIGNAMES.get(sig, sig).upper())
            else:
                code = os.WEXITSTATUS(status)
                if code not in (0, WORKER_BOOT_ERROR):
                    log.error("Worker (pid:%d) exited with code %d", pid, code)
            if self.holding and not self._stopping:
                self._release()  # A worker died before any was ready: show the context.

    def _died_booting(self, pid, w, status):
        """A worker ended before it was ready. One that exited by itself on
        the first boot has hit what every worker will hit: give up, as for a
        reported boot failure. Otherwise replace it, but each time later,
        so a crash at start-up does not become a fork loop. Status 0 is a
        worker told to stop while it imported (TERM, INT or QUIT sent to it,
        not by us): replaced too. True when it was fatal (and said so in one
        line)."""
        exited = os.WIFEXITED(status)
        if exited and os.WEXITSTATUS(status) == WORKER_BOOT_ERROR:
            return False  # Reported, and handled by _boot_failed.
        if (exited and os.WEXITSTATUS(status) != 0 and not self.ever_ready
                and self.reload_from is None):
            self._boot_failed(pid, w, "worker exited with code %d before it was ready"
                              % os.WEXITSTATUS(status))
            return True
        self.spawn_delay = min(max(self.spawn_delay * 2, 0.1), 5.0)
        self.spawn_after = time.monotonic() + self.spawn_delay
        log.warning("Worker (pid:%d) died before it was ready; the next one starts in %.1f s",
                    pid, self.spawn_delay)
        return False

    def _murder(self):
        t = self.settings.timeout
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.killed:
                continue
            if w.retiring is not None:
                # Draining: give it graceful_timeout, then kill.
                if now - w.retiring > self.settings.graceful_timeout:
                    w.killed = True
                    self._kill(w, signal.SIGKILL)
                continue
            if t > 0 and now - w.last_beat() > t:
                log.critical("WORKER TIMEOUT (pid:%d)", w.pid)
                w.killed = True
                self._kill(w, signal.SIGKILL)

    # -- HUP

    def _reload(self):
        changed = 0     # what this reload does to the worker count
        if self.reload_settings is not None:
            try:
                new = self.reload_settings()
            except Exception as e:
                log.error("Reload: bad configuration, keeping the old one: %s", e)
                return
            old = self.settings
            if any(l.bind.uses_tls(new.certfile) != l.tls for l in self.listeners):
                log.error("Reload: --certfile was %s, which would change whether a bind speaks "
                          "TLS; restart the server for that. Keeping the old configuration",
                          "added" if new.certfile is not None else "removed")
                return
            if new.bind != old.bind:
                log.warning("Reload: bind addresses changed; restart the server to rebind")
            try:
                self.logs.setup(new)
            except OSError as e:
                log.error("Reload: cannot open a log file, keeping the old configuration: %s", e)
                return
            if new.workers != old.workers:
                changed = new.workers - self.num_workers
                self.num_workers = new.workers
            self.settings = new
        if self.app is not None:
            log.warning("Reload: the app was preloaded in the manager; new workers run the same code")
        self.reload_from = self.gen if self.reload_from is None else self.reload_from
        # A fresh number even after a failed reload went back to the old one:
        # a late report from that reload's workers must not match this one.
        self.last_gen += 1
        self.gen = self.last_gen
        self.gen_settings[self.gen] = self.settings
        if changed:
            self.gen_workers[self.gen] = changed
        self._manage()

    # -- stopping

    def _shutdown(self, graceful):
        """Stop every worker (TERM, or QUIT when not graceful) and wait for them."""
        self._stopping = True
        # New clients are refused from now on, not left in the backlog
        # until the drain ends (each worker closes its copies as it stops).
        for l in self.listeners:
            l.close()
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        limit = self.settings.graceful_timeout
        deadline = time.monotonic() + limit
        self._kill_all(sig)
        while self.workers:
            self._reap()
            if not self.workers:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                for w in self.workers.values():
                    w.killed = True
                self._kill_all(signal.SIGKILL)
                deadline = float("inf")
                left = 1.0
            self._wait(min(left, 0.1))
            while self.sig_queue:
                s = self.sig_queue.pop(0)
                if s in (signal.SIGQUIT, signal.SIGINT) and sig == signal.SIGTERM:
                    log.info("Handling signal: %s (stopping fast)", _SIGNAMES.get(s, s))
                    sig = signal.SIGQUIT
                    self._kill_all(signal.SIGQUIT)

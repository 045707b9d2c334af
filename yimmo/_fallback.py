"""TEMPORARY: a minimal WSGIServer built on yimmo.Server, for the CLI and arbiter
to run against until the C `yimmo.WSGIServer` lands. Remove it then.

It is not PEP 3333 complete (the body is buffered, write() is collected, no
file_wrapper) and it calls on_tick from a helper thread, skipping ticks while
an application call is in progress so a stuck app still looks stuck.
"""
import io
import sys
import threading
import time

import yimmo


class WSGIServer:
    def __init__(self, app, *, sock=None, host="127.0.0.1", port=8000, url_scheme="http",
                 script_name="", multiprocess=False, access_log=None, on_tick=None,
                 tick_interval=1.0, threads=None, **kw):
        if threads:
            raise TypeError("WSGIServer() got an unexpected keyword argument 'threads'")
        if isinstance(sock, (list, tuple)):
            if len(sock) != 1:
                raise ValueError("the fallback WSGIServer serves exactly one socket")
            sock = sock[0]
        self._app = app
        self._scheme = url_scheme
        self._script_name = script_name
        self._multiprocess = multiprocess
        self._access_log = access_log
        self._on_tick = on_tick
        self._tick = tick_interval
        self._busy_since = None
        self._done = threading.Event()
        if sock is not None:
            self._srv = yimmo.Server(self._handle, sock=sock, **kw)
        else:
            self._srv = yimmo.Server(self._handle, host=host, port=port, **kw)

    @property
    def address(self):
        return self._srv.address

    def run(self):
        t = None
        if self._on_tick is not None:
            t = threading.Thread(target=self._ticker, daemon=True)
            t.start()
        try:
            self._srv.run()
        finally:
            self._done.set()

    def stop(self, timeout=None):
        self._srv.stop(timeout)

    def _ticker(self):
        while not self._done.wait(self._tick):
            if self._busy_since is None:
                try:
                    self._on_tick()
                except Exception:
                    pass

    def _handle(self, ex):
        t0 = time.monotonic()
        self._busy_since = t0
        try:
            self._call(ex, t0)
        finally:
            self._busy_since = None

    def _call(self, ex, t0):
        host, port = self._srv.address[:2]
        environ = {
            "REQUEST_METHOD": ex.method,
            "SCRIPT_NAME": self._script_name,
            "PATH_INFO": ex.path,
            "QUERY_STRING": ex.query,
            "RAW_URI": ex.target,
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": ex.version,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self._scheme,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": self._multiprocess,
            "wsgi.run_once": False,
        }
        try:
            ra = ex.remote_addr
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = ra[0], str(ra[1])
        except Exception:
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = "", ""
        for k, v in ex.headers.items():
            key = k.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = v
            else:
                key = "HTTP_" + key
                environ[key] = environ[key] + "," + v if key in environ else v
        environ["wsgi.input"] = io.BytesIO(ex.body)
        state = {}
        out = []

        def start_response(status, headers, exc_info=None):
            state["status"], state["headers"] = status, list(headers)
            return out.append

        try:
            it = self._app(environ, start_response)
            try:
                for chunk in it:
                    out.append(chunk)
            finally:
                if hasattr(it, "close"):
                    it.close()
            status, headers = state["status"], state["headers"]
        except Exception:
            import logging
            logging.getLogger("yimmo").exception("Error handling request %s", ex.target)
            status, headers, out = "500 Internal Server Error", [("Content-Type", "text/plain")], [b"Internal Server Error\n"]
        body = b"".join(out)
        hdrs = [(k, v) for k, v in headers if k.lower() != "content-length"]
        ex.respond(int(status.split(None, 1)[0]), hdrs, body)
        if self._access_log is not None:
            self._access_log(environ, status, headers, len(body), time.monotonic() - t0)

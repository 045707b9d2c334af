"""The `wsgi_server` fixture: a real yimmo.WSGIServer on a background thread.

Import the fixture into a test module (`from wsgi_conftest import wsgi_server`).
It reuses conftest's LiveServer (run() on a thread, readiness by TCP handshake,
stop() and a clean return asserted at teardown) and adds two checks of its own:

* every application is wrapped in `wsgiref.validate.validator` unless the test
  asks for `validate=False`; the modules using it turn `WSGIWarning` into an
  error (`pytestmark`), so a warning fails the request with a 500;
* it runs each test with the application on the loop thread and again on
  worker threads (`threads=2`);
* every record the `yimmo` logger emits is kept in `live.errors`; teardown
  fails when one was logged and the test did not say `expect_errors=True`.
"""
import logging
import wsgiref.validate

import pytest

import yimmo
from conftest import (LiveServer, LogRecords, assert_no_logged_errors, stop_servers, wait_accepting,
                      wait_for)

# For a module's pytestmark: the validator's warnings become errors in the app.
STRICT_WARNINGS = [
    pytest.mark.filterwarnings("error::wsgiref.validate.WSGIWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


class LiveWSGI(LiveServer):
    """A LiveServer for WSGIServer, with the yimmo log records of its test."""

    def __init__(self, srv, log):
        super().__init__(srv)
        self.log = log

    @property
    def errors(self):
        return [r for r in self.log.records if r.levelno >= logging.ERROR]

    def wait_errors(self, n):
        """Wait until at least n error records were logged; return them."""
        wait_for(lambda: len(self.errors) >= n)
        return self.errors

    def request(self, method, path, body=None, headers=None):
        """One request on a fresh http.client connection: (response, body)."""
        return self.get(path, method=method, body=body, headers=headers)


@pytest.fixture(params=[0, 2], ids=["loop", "threads"])
def wsgi_server(request):
    """Factory: wsgi_server(app, validate=True, expect_errors=False, **kw) -> LiveWSGI.

    Each test runs twice: the application called on the loop thread
    (threads=0) and on a pool of two worker threads (threads=2), unless the
    test passes threads= itself.
    """
    logger = logging.getLogger("yimmo")
    log = LogRecords()
    old_level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    started = []
    expect = {"errors": False}

    def start(app, validate=True, expect_errors=False, **kw):
        if validate:
            app = wsgiref.validate.validator(app)
        if expect_errors:
            expect["errors"] = True
        if "sock" not in kw:
            kw.setdefault("port", 0)
        kw.setdefault("threads", request.param)
        live = LiveWSGI(yimmo.WSGIServer(app, **kw), log)
        live.threads = kw["threads"]
        started.append(live)
        live.thread.start()
        wait_accepting(live)
        return live

    try:
        yield start
        stop_servers(started)
        if not expect["errors"]:
            assert_no_logged_errors(log.records)
    finally:
        for live in started:
            if not live.returned.is_set():
                live.srv.stop()
        logger.removeHandler(log)
        logger.setLevel(old_level)

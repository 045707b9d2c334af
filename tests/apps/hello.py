"""Small WSGI apps for the CLI and arbiter tests.

The tests run the CLI with this directory as the working directory, so the
app spec is 'hello:application' (the CLI puts the cwd on sys.path).
"""
import os
import time

# Import-time side effect for the --preload test: which process imported us.
if os.environ.get("YIMMO_TEST_IMPORT_MARK"):
    with open(os.environ["YIMMO_TEST_IMPORT_MARK"], "a") as f:
        f.write("%d\n" % os.getpid())


def application(environ, start_response):
    """'hello from PID'; /sleep/SECONDS sleeps first (on the handler's thread)."""
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/sleep/"):
        mark = os.environ.get("YIMMO_TEST_MARK")
        if mark:  # Lets a test know the request is in flight.
            with open(mark, "a") as f:
                f.write("start %d\n" % os.getpid())
        time.sleep(float(path[len("/sleep/"):]))
    if path == "/malloc-tuned":
        import yimmo
        body = repr(yimmo._yimmo._malloc_tuned()).encode()
    else:
        body = ("hello from %d\n" % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Pid", str(os.getpid()))])
    return [body]


app = application


def describe(environ, start_response):
    """'SCRIPT_NAME|PATH_INFO|wsgi.url_scheme'; /errors writes a line to wsgi.errors."""
    if environ["PATH_INFO"] == "/errors":
        environ["wsgi.errors"].write("a line for wsgi.errors\n")
        environ["wsgi.errors"].flush()
    body = "|".join([environ["SCRIPT_NAME"], environ["PATH_INFO"],
                     environ["wsgi.url_scheme"]]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def create_app(greeting="hello"):
    """A factory: 'hello:create_app("hi")'."""
    def factory_app(environ, start_response):
        body = ("%s from %d\n" % (greeting, os.getpid())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return factory_app


def failing_factory():
    raise RuntimeError("the factory refused")


not_callable = 42

"""Benchmark target for the WSGI peers (gunicorn, bjoern): the same body and
Content-Type as bench/apps/hello_yimmo.py, with an explicit Content-Length.

    gunicorn --chdir bench/apps hello_wsgi:app
"""
BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]

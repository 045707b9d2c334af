"""A module with `app` but no `application`: 'tests.apps.only_app' finds it."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
    return [b"only app"]

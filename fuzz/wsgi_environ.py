"""Fuzz the WSGI environ builder: yimmo.parsers.build_wsgi_environ.

Byte 0 picks script_name, url_scheme and the client's and server's addresses
(checks.decode_environ_input); the rest is one request. The environ comes
from the same C code WSGIServer runs, and is held to parse_http_request's
tuple and PEP 3333 (fuzz/checks.py check_environ): the same ParseError when
the parser refuses; every key and every value but the wsgi.* objects a
latin-1 str; REQUEST_METHOD the method, PATH_INFO the percent-decoded path
(urllib.parse.unquote_to_bytes, as latin-1) without SCRIPT_NAME,
QUERY_STRING the raw query; HTTP_* keys upper case with '_' for '-', never
HTTP_CONTENT_TYPE / HTTP_CONTENT_LENGTH, repeats joined with ',' ('; ' for
Cookie); SERVER_NAME/PORT from the absolute target, Host or the server
address; wsgi.input the decoded body.
"""
from _harness import main

from checks import check_environ

if __name__ == "__main__":
    main(check_environ)

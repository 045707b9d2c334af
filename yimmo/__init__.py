"""yimmo: a fast HTTP/1.1, WebSocket and WSGI server with a C core on libev."""
from ._yimmo import (Exchange, Headers, ParseError, Server, WebSocket, WSGIServer, WSMessage,
                     check_tls, __version__)

__all__ = ["Exchange", "Headers", "ParseError", "Server", "WSGIServer", "WebSocket", "WSMessage",
           "check_tls", "__version__"]

from ._yimmo import Exchange as Exchange
from ._yimmo import Headers as Headers
from ._yimmo import ParseError as ParseError
from ._yimmo import Server as Server
from ._yimmo import WebSocket as WebSocket
from ._yimmo import WSGIServer as WSGIServer
from ._yimmo import WSMessage as WSMessage
from ._yimmo import __version__ as __version__

"""avrohttp: Avro RPC over HTTP, for any protocol, with avro.ipc's flaws fixed.

The parts that need neither eventlet nor uvicorn are here: Responder (the server side of a
call), Requestor and Client (the client side; AsyncClient for asyncio, imported on first
use), make_application (a WSGI application for any WSGI server) and make_asgi_application
(an ASGI one, for any ASGI server), and ServerOptions; DeclaredError and RemoteSystemError,
the two kinds of Avro error a call can raise; CallFailed (no Avro answer) and its
DeadlineExceeded; BadArguments, for parameters that do not fit a message; HandlersMismatch,
for a Responder whose handlers do not fit its protocol; parse_protocol, which keeps a
protocol's JSON text as written; CallHook, code run around each call (avrohttp.metrics is
one, in Prometheus's format), and Call, what it sees; current_call() and time_left(), the
context of the call that a handler answers (avrohttp.context). The servers are
avrohttp.serve.Server (eventlet) and avrohttp.serve_asyncio.Server (asyncio), and their
command line avrohttp.cli. Importing avrohttp changes no global state.
"""

from avrohttp.arguments import BadArguments
from avrohttp.asgi import make_asgi_application
from avrohttp.client import CallFailed, Client, DeadlineExceeded
from avrohttp.context import current_call, time_left
from avrohttp.errors import DeclaredError, HandlersMismatch, RemoteSystemError
from avrohttp.hooks import Call, CallHook
from avrohttp.options import ServerOptions
from avrohttp.protocol import parse as parse_protocol
from avrohttp.requestor import Requestor
from avrohttp.responder import Responder
from avrohttp.wsgi import make_application

__all__ = ["AsyncClient", "BadArguments", "Call", "CallFailed", "CallHook", "Client",
           "DeadlineExceeded", "DeclaredError", "HandlersMismatch", "RemoteSystemError",
           "Requestor", "Responder", "ServerOptions", "current_call", "make_application",
           "make_asgi_application", "parse_protocol", "time_left"]


def __getattr__(name: str) -> object:
    # AsyncClient is imported on first use: a program that does not use it loads no asyncio.
    if name == "AsyncClient":
        from avrohttp.async_client import AsyncClient
        return AsyncClient
    raise AttributeError(f"module 'avrohttp' has no attribute {name!r}")

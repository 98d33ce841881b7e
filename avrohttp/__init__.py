"""avrohttp: Avro RPC over HTTP, for any protocol, with avro.ipc's flaws fixed.

The parts that need no eventlet are here: Responder (the server side of a call), Requestor
and Client (the client side), make_application (a WSGI application for any WSGI server),
and ServerOptions; DeclaredError and RemoteSystemError, the two kinds of Avro error a call
can raise; parse_protocol, which keeps a protocol's JSON text as written. The eventlet
server is avrohttp.serve, and its command line avrohttp.cli; import those after
eventlet.monkey_patch(). Importing avrohttp changes no global state.
"""

from avrohttp.client import CallFailed, Client
from avrohttp.errors import DeclaredError, RemoteSystemError
from avrohttp.options import ServerOptions
from avrohttp.protocol import parse as parse_protocol
from avrohttp.requestor import Requestor
from avrohttp.responder import Responder
from avrohttp.wsgi import make_application

__all__ = ["CallFailed", "Client", "DeclaredError", "RemoteSystemError", "Requestor",
           "Responder", "ServerOptions", "make_application", "parse_protocol"]

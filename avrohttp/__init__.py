"""avrohttp: Avro RPC over HTTP, for any protocol, with avro.ipc's flaws fixed.

The parts that need no eventlet are here: Responder (the server side of a call), Requestor
and Client (the client side), make_application (a WSGI application for any WSGI server),
and ServerOptions. The eventlet server is avrohttp.serve, and its command line avrohttp.cli;
import those after eventlet.monkey_patch(). Importing avrohttp changes no global state.
"""

from avrohttp.client import CallFailed, Client
from avrohttp.options import ServerOptions
from avrohttp.requestor import Requestor
from avrohttp.responder import Responder
from avrohttp.wsgi import make_application

__all__ = ["CallFailed", "Client", "Requestor", "Responder", "ServerOptions",
           "make_application"]

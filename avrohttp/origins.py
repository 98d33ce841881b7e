"""What a call's context reads from the HTTP request it came in: its headers, the peer's
address and the peer's TLS certificate (avrohttp.hooks.Call's headers, peer and
peer_certificate).

A call keeps what it came from as it is, its origin: a WSGI environ, an ASGI scope, or the
asyncio host's connection (avrohttp.call_fast_path.CallFastPath, for a call answered on its
fast path); these functions read one only when a handler or a hook asks. So a call whose
context nobody reads costs nothing here.
"""

from typing import TYPE_CHECKING, Dict, Optional, Tuple, cast

if TYPE_CHECKING:  # imported only for the type: it needs uvicorn
    from avrohttp.call_fast_path import CallFastPath

# Where the hosts keep the request's connection: avrohttp.serve's ClientDeadline (whose
# .protocol.connection is the socket) in the WSGI environ, and avrohttp.asyncio_protocol's
# HTTPProtocol (whose .transport is the connection) in the ASGI scope. Both hosts put it
# there for their request deadlines: avrohttp.wsgi.DEADLINE and avrohttp.asgi.DEADLINE are
# this key.
CONNECTION_KEY = "avrohttp.request_deadline"


def headers(origin: object) -> Dict[str, str]:
    """The request's headers, by lower-case name; a repeated header's values are joined with
    ", " (RFC 9110, section 5.3)."""
    if origin is None:
        return {}
    if isinstance(origin, dict):
        if "REQUEST_METHOD" in origin:  # WSGI
            found = {}
            for key, value in origin.items():
                if key.startswith("HTTP_"):
                    found[key[5:].replace("_", "-").lower()] = value
            for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if origin.get(key):
                    found[key.replace("_", "-").lower()] = origin[key]
            return found
        pairs = origin.get("headers", ())  # ASGI
    else:
        # The asyncio host's connection: uvicorn's list of pairs.
        pairs = cast("CallFastPath", origin).headers
    found = {}
    for name, value in pairs:
        name, value = name.decode("latin-1").lower(), value.decode("latin-1")
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def peer(origin: object) -> Optional[Tuple[str, int]]:
    """The client's (address, port), or None if the server does not say."""
    if origin is None:
        return None
    if isinstance(origin, dict):
        if "REQUEST_METHOD" in origin:  # WSGI
            address = origin.get("REMOTE_ADDR")
            if address is None:
                return None
            port = origin.get("REMOTE_PORT")
            return (address, int(port) if port and str(port).isdigit() else 0)
        client = origin.get("client")  # ASGI
    else:
        client = cast("CallFastPath", origin).client
    return tuple(client) if client else None


def peer_certificate(origin: object) -> Optional[dict]:
    """The client's TLS certificate as ssl.SSLSocket.getpeercert() gives it, or None: no TLS,
    a server that does not ask for client certificates (--client-ca), or a WSGI or ASGI
    server other than this package's hosts, which do not pass the connection on."""
    if origin is None:
        return None
    if isinstance(origin, dict):
        connection = origin.get(CONNECTION_KEY)
        if connection is None:
            return None
        if "REQUEST_METHOD" in origin:  # eventlet: the deadline's protocol has the socket
            sock = connection.protocol.connection
            certificate = sock.getpeercert() if hasattr(sock, "getpeercert") else None
            return certificate or None
        transport = connection.transport  # asyncio, through ASGI
    else:
        transport = cast("CallFastPath", origin).transport  # asyncio, on the call fast path
    return transport.get_extra_info("peercert") or None

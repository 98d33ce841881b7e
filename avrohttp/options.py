"""Every option of the server, with its safe default, in one settings object: ServerOptions.

avrohttp.cli builds one from the command line; each host's Server (avrohttp.serve for
eventlet, avrohttp.serve_asyncio for asyncio) and avrohttp.supervisor take it whole. Each
default says why it is what it is. This module imports nothing else of the package.
"""

import dataclasses
from typing import Optional


DEFAULT_HOST = "127.0.0.1"
# The largest request body taken, in bytes; a larger one gets 413 unread.
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_PORT = 8130
# eventlet.listen's default backlog of 50 overflows under a burst of connections, and the
# kernel then drops SYNs: clients wait a second or more before they retry.
LISTEN_BACKLOG = 2048
# eventlet's defaults wait forever for a slow or silent client, and take 1,024 connections.
# Seconds that a client has to take its whole answer (a client that never reads it would
# otherwise hold the connection, and a green thread, forever):
SOCKET_TIMEOUT = 30.0
# Seconds that a keep-alive connection may wait for its next request (longer than nginx's
# 20 s upstream keep-alive, so that a balancer closes first):
IDLE_TIMEOUT = 30.0
# Seconds that a request (its line, headers and body) may take to arrive, from its first byte.
# Without this, a client that sends a byte every few seconds holds a connection forever.
REQUEST_TIMEOUT = 20.0
# Connections served at once. Past it, new ones wait in the listen backlog; each costs a
# green thread and a file descriptor, a few tens of kilobytes in all.
MAX_CONNECTIONS = 5000
# Seconds that a stop (SIGTERM, Ctrl-C) waits for the calls in flight.
DRAIN_TIMEOUT = 30.0
# Seconds that a server goes on serving after SIGTERM, with GET /health/ready at 503 and every
# answer closing its connection, before it stops accepting: the time that an orchestrator's
# balancers take to stop sending it calls (docs/deployment.md). 0 by default: a server
# that is not behind such balancers has no one to wait for.
SHUTDOWN_DELAY = 0.0
# The environment variable in which the supervisor of --workers N names the directory where
# its workers share their metrics (avrohttp.metrics).
METRICS_DIR_ENV = "AVROHTTP_METRICS_DIR"


@dataclasses.dataclass
class ServerOptions:
    """How to serve: where, with which limits and timeouts, in how many processes."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 picks a free port
    certfile: Optional[str] = None  # serve HTTPS with this certificate chain (PEM)...
    keyfile: Optional[str] = None  # ...and its private key (PEM)
    # Mutual TLS: require of each client a certificate issued by a certificate authority in
    # this PEM file (HTTPS only).
    client_ca: Optional[str] = None
    workers: int = 1  # processes serving the port (avrohttp.supervisor)
    max_body_bytes: int = MAX_BODY_BYTES
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    socket_timeout: float = SOCKET_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    drain_timeout: float = DRAIN_TIMEOUT
    shutdown_delay: float = SHUTDOWN_DELAY
    # Seconds after which a kept-alive connection's next answer closes it (give or take 10%:
    # hosting.connection_lifetime), so that its client connects again, maybe to a server
    # started since. None by default: a client then keeps its server while it is kept alive.
    max_connection_age: Optional[float] = None
    access_log: bool = False  # one log line per request
    # Count calls (avrohttp.metrics) and serve GET /metrics. Off by default: they were not
    # shown to cost at most 2% of the throughput (docs/metrics.md, "What it costs").
    metrics: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

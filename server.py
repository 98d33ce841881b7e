"""An Avro RPC server for the AvroEcho protocol, on eventlet.wsgi.

Try it: `python server.py`, then `python client.py --echo --query "Hello World"` in another
terminal. Ctrl-C (or SIGTERM) stops it after answering the calls already in flight.
"""

import warnings

with warnings.catch_warnings():
    # eventlet warns on import that it is deprecated. This example still uses it on purpose:
    # README.md, "eventlet's status", says why and where to go next. Only that warning is
    # silenced (its class lives inside eventlet, so it is matched by its text).
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet

# Patch the standard library before anything else imports it, so that sockets, time and
# threads all cooperate with eventlet's green threads.
eventlet.monkey_patch()

import argparse
import functools
import logging
import os
import signal
import socket
import sys
from typing import Callable, Iterable, Optional

import avro.errors
import avro.ipc
import eventlet.wsgi

import avro_fixes
import avro_speed
import workers
from protocol import EchoProtocol
from serving import (DEADLINE, DRAIN_TIMEOUT, CannotServeTLS, EventletLog, Protocol,
                     RequestTimeout, allow_open_files, stop_gracefully_on, stop_when_orphaned,
                     tls_context)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8130
MAX_BODY_BYTES = 1024 * 1024
# eventlet.listen's default backlog of 50 overflows under a burst of connections, and the
# kernel then drops SYNs: clients wait a second or more before they retry.
LISTEN_BACKLOG = 2048
# eventlet's defaults wait forever for a slow or silent client, and take 1,024 connections.
# Seconds that each read or write on a connection may wait for the client:
SOCKET_TIMEOUT = 30.0
# Seconds that a keep-alive connection may wait for its next request:
IDLE_TIMEOUT = 30.0
# Seconds that a request (its line, headers and body) may take to arrive, from its first byte.
# Without this, a client that sends a byte every few seconds holds a connection forever.
REQUEST_TIMEOUT = 20.0
# Connections served at once. Past it, new ones wait in the listen backlog; each costs a
# green thread and a file descriptor, a few tens of kilobytes in all.
MAX_CONNECTIONS = 5000

log = logging.getLogger("server")


class BodyTooLarge(Exception):
    """The body is over the limit: HTTP 413."""


class EchoResponder(avro_fixes.FixedResponder):
    """Answers AvroEcho calls: each message `name` is handled by `handle_<name>`."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)

    def invoke(self, message, request: dict) -> object:
        handler = getattr(self, f"handle_{message.name}", None)
        if handler is None:
            raise avro.errors.AvroRemoteException(f"Not implemented: {message.name}")
        return handler(**request)

    def handle_echo(self, query: str) -> str:
        return query

    def handle_split(self, query: str) -> str:
        return query[: len(query) // 2]


def make_application(responder: Optional[avro.ipc.Responder] = None,
                     max_body_bytes: int = MAX_BODY_BYTES) -> Callable:
    """Return a WSGI application that answers Avro calls POSTed to any path but /health."""
    responder = responder or EchoResponder()

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        # /health is for load balancers and orchestrators, and only that: a GET (or HEAD)
        # gets 200 from any process that can still answer. Avro calls go to any other path.
        if environ.get("PATH_INFO") == "/health":
            if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
                return _plain(start_response, "200 OK", "OK")
            return _plain(start_response, "405 Method Not Allowed",
                          "/health answers GET; Avro calls go to any other path",
                          [("Allow", "GET, HEAD")])
        if environ["REQUEST_METHOD"] != "POST":
            return _plain(start_response, "405 Method Not Allowed",
                          "Avro calls must be POSTed", [("Allow", "POST")])
        content_type = environ.get("CONTENT_TYPE", "avro/binary")
        if (content_type != "avro/binary"  # checked first: what every Avro client sends
                and content_type and content_type.split(";")[0].strip().lower() != "avro/binary"):
            return _plain(start_response, "415 Unsupported Media Type",
                          "Content-Type must be avro/binary")
        try:
            body = _read_body(environ, max_body_bytes)
        except BodyTooLarge:
            # The rest of the body is not wanted: ask the client to close the connection.
            return _plain(start_response, "413 Content Too Large",
                          f"Body is larger than {max_body_bytes} bytes", [("Connection", "close")])
        except RequestTimeout as e:
            _log_client(environ, e)
            return _plain(start_response, "408 Request Timeout", "The body came too slowly",
                          [("Connection", "close")])
        except (OSError, ValueError) as e:  # the client stalled, hung up, or broke the chunking
            _log_client(environ, f"the body could not be read: {e}")
            return _plain(start_response, "400 Bad Request", "Body could not be read",
                          [("Connection", "close")])
        if environ.get(DEADLINE):
            environ[DEADLINE].cancel()  # the request is in: the rest is the server's time
        try:
            call_response = responder.respond(avro_speed.unframe(body))
        except (avro_speed.BadFraming, avro_fixes.BadRequest) as e:
            return _plain(start_response, "400 Bad Request", f"Bad Avro request: {e}")
        except Exception:  # a bug, not bad input: log it here, where eventlet would not
            log.exception("unexpected error while answering a call")
            return _plain(start_response, "500 Internal Server Error", "Internal server error")
        payload = avro_speed.frame(call_response)
        start_response("200 OK", [("Content-Type", "avro/binary"),
                                  ("Content-Length", str(len(payload)))])
        return [payload]

    return application


def _read_body(environ: dict, limit: int) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        if int(length) > limit:  # refuse before reading a byte of it
            raise BodyTooLarge()
        return stream.read(int(length))
    body = stream.read(limit + 1)  # chunked: the server decodes it; stop one past the limit
    if len(body) > limit:
        raise BodyTooLarge()
    return body


def _log_client(environ: dict, problem: object) -> None:
    """One line in the log for a client's failure (not the server's: that is an ERROR)."""
    log.info("client %s:%s: %s", environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"), problem)


def _plain(start_response: Callable, status: str, reason: str,
           headers: Iterable = ()) -> list:
    body = (reason + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]


application = make_application()


def listen(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           reuse_port: bool = False) -> socket.socket:
    """Bind and listen. Port 0 picks a free port; a port in use is an error.

    reuse_port is for the workers of `--workers N` (see workers.py), which share one port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # eventlet sets SO_REUSEPORT by default, which would let a second server bind the same
    # port silently and take half the calls. Here a busy port is an error.
    return eventlet.listen((host, port), family, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)


def serve(listener: socket.socket, app: Callable = application,
          socket_timeout: float = SOCKET_TIMEOUT, access_log: bool = False,
          idle_timeout: float = IDLE_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT,
          max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve app on listener until the accept loop is interrupted, then drain."""
    eventlet.wsgi.server(
        listener, app,
        log=EventletLog(access_log),
        log_output=True,  # to EventletLog; Protocol then turns access lines off, or on
        debug=False,  # True (eventlet's default) sends tracebacks to clients
        socket_timeout=socket_timeout,
        keepalive=idle_timeout,
        max_size=max_connections,
        protocol=functools.partial(Protocol, request_timeout=request_timeout,
                                   access_log=access_log),
    )


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the AvroEcho protocol over HTTP.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    parser.add_argument("--certfile", metavar="FILE",
                        help="serve HTTPS with this certificate, a PEM file "
                        "(the server's certificate first, then any intermediate ones)")
    parser.add_argument("--keyfile", metavar="FILE",
                        help="the certificate's private key, a PEM file")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes serving the port, one per core is a good start "
                             "(default: %(default)s)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                        help="larger request bodies get 413 (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT,
                        help="seconds in which a request's headers and body must arrive, "
                             "from its first byte (default: %(default)s)")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT,
                        help="seconds a keep-alive connection may wait for its next request "
                             "(default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="connections served at once (default: %(default)s)")
    parser.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT,
                        help="seconds a stop waits for the calls in flight "
                             "(default: %(default)s)")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request")
    # Given by the supervisor to each worker: the pipe on which to say it listens.
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"argument --port: {args.port} is not a port number (0 to 65535)")
    for flag in ("workers", "max_body_bytes", "max_connections"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')}: {getattr(args, flag)} is not "
                         "1 or more")
    for flag in ("request_timeout", "idle_timeout", "drain_timeout"):
        if not getattr(args, flag) > 0:  # also refuses nan
            parser.error(f"argument --{flag.replace('_', '-')}: must be more than 0 seconds")
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together: give both, or neither")
    worker = args.ready_fd is not None
    supervisor = os.getppid()  # before saying it is ready: it may die any time after that

    logging.basicConfig(level=logging.INFO, format=(
        "%(asctime)s %(name)s[%(process)d] %(message)s" if worker
        else "%(asctime)s %(name)s %(message)s"))
    context = None
    if args.certfile:
        try:  # here, before any worker starts, so that a bad file is reported once
            context = tls_context(args.certfile, args.keyfile)
        except CannotServeTLS as e:
            log.error("cannot serve HTTPS: %s", e)
            return 1
    if args.workers > 1:
        argv = sys.argv[1:] if argv is None else argv
        return workers.run(__file__, argv, args.host, args.port, args.workers,
                           args.drain_timeout, "https" if context else "http")
    try:
        listener = listen(args.host, args.port, reuse_port=worker)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e.strerror or e)
        return 1
    if context:
        # Each connection's handshake then happens in its own green thread, on first read.
        listener = context.wrap_socket(listener, server_side=True)
    max_connections = allow_open_files(args.max_connections)
    # Before anyone is told to call:
    stop_gracefully_on(listener, signal.SIGINT, signal.SIGTERM, drain_timeout=args.drain_timeout)
    if worker:
        try:
            with open(args.ready_fd, "wb") as ready:
                ready.write(b"1")
        except BrokenPipeError:  # the supervisor died before this worker was ready
            return 1
        stop_when_orphaned(supervisor)
    else:
        host, port = listener.getsockname()[:2]
        log.info("AvroEcho server listening on %s://%s:%d/", "https" if context else "http",
                 host, port)
    serve(listener, make_application(max_body_bytes=args.max_body_bytes),
          access_log=args.access_log, idle_timeout=args.idle_timeout,
          request_timeout=args.request_timeout, max_connections=max_connections)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

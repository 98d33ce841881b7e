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
import resource
import signal
import socket
import ssl
import sys
from typing import Callable, Iterable, Optional

import avro.errors
import avro.ipc
import eventlet.wsgi
import greenlet

import avro_fixes
import workers
from protocol import EchoProtocol

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
# Seconds that a stop (SIGTERM, Ctrl-C) waits for the calls in flight.
DRAIN_TIMEOUT = 30.0

log = logging.getLogger("server")


class BodyTooLarge(Exception):
    """The body is over the limit: HTTP 413."""


class RequestTimeout(socket.timeout):
    """The request did not arrive within REQUEST_TIMEOUT of its first byte."""


# Where _Protocol puts the request's deadline in the WSGI environ, for the application.
DEADLINE = "avroecho.request_deadline"


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
            log.info("client %s:%s: %s", environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"), e)
            return _plain(start_response, "408 Request Timeout", "The body came too slowly",
                          [("Connection", "close")])
        except (OSError, ValueError):  # the client stalled, hung up, or broke the chunking
            return _plain(start_response, "400 Bad Request", "Body could not be read",
                          [("Connection", "close")])
        if environ.get(DEADLINE):
            environ[DEADLINE].cancel()  # the request is in: the rest is the server's time
        try:
            call_response = responder.respond(avro_fixes.unframe(body))
        except (avro_fixes.BadFraming, avro_fixes.BadRequest) as e:
            return _plain(start_response, "400 Bad Request", f"Bad Avro request: {e}")
        except Exception:  # a bug, not bad input: log it here, where eventlet would not
            log.exception("unexpected error while answering a call")
            return _plain(start_response, "500 Internal Server Error", "Internal server error")
        payload = avro_fixes.frame(call_response)
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


class CannotServeTLS(Exception):
    """The certificate or key file is missing, unreadable, or not what --certfile and
    --keyfile need."""


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The TLS settings to serve HTTPS with this certificate (chain) and key, both PEM files.

    Raises CannotServeTLS, with a message that names the file at fault where it can.
    """
    for path in (certfile, keyfile):  # load_cert_chain would not say which one is missing
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise CannotServeTLS(f"cannot read {path}: {e.strerror}") from e

    def no_password() -> bytes:  # OpenSSL would otherwise ask for one on the terminal
        raise CannotServeTLS(f"{keyfile} is protected by a password: give a key without one")

    # Python's recommended settings for a server: TLS 1.2 or later, no weak ciphers.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile, password=no_password)
    except ssl.SSLError as e:  # OpenSSL's reason, if it has one: KEY_VALUES_MISMATCH, say
        raise CannotServeTLS(f"{certfile} and {keyfile} are not a PEM certificate and its "
                             f"key ({e.reason or 'bad PEM data'})") from e
    return context


class _Protocol(eventlet.wsgi.HttpProtocol):
    """eventlet.wsgi's HTTP handling, with a deadline for each request to arrive, and each
    failure of a client logged once, in one line.

    - eventlet's socket_timeout bounds each read, not the request: a client that sends a
      byte every few seconds keeps its connection, and a green thread, forever. Here the
      request line, the headers and the body must arrive within request_timeout of the
      request's first byte. The application cancels the deadline (environ[DEADLINE]) once it
      has the body.
    - eventlet does each TLS handshake on the connection's first read, and lets its
      ssl.SSLError escape; the hub then prints a traceback, one for each client that speaks
      plain HTTP to the port or does not trust the certificate (eventlet issue 620). And a
      request line that does not parse is reported by the standard library's http.server, in
      two lines written straight to stderr.
    """

    deadline: Optional[eventlet.Timeout] = None

    def __init__(self, conn_state: list, server, request_timeout: float) -> None:
        self.request_timeout = request_timeout
        super().__init__(conn_state, server)  # this serves the whole connection

    def handle(self) -> None:
        try:
            super().handle()
        except ssl.SSLError as e:  # the reason names the problem: HTTP_REQUEST, say
            self.log_error("TLS failed: %s", e.reason or type(e).__name__)
        except ValueError:
            # When eventlet.wsgi stops, it shuts down the idle connections under their green
            # threads (and marks them STATE_CLOSE). A plain socket then reads as closed; a
            # TLS one raises ValueError.
            if self.conn_state[2] != eventlet.wsgi.STATE_CLOSE:
                raise

    def _read_request_line(self) -> bytes:
        # A new connection's first request (and its TLS handshake) must come within the
        # deadline. Between requests, a keep-alive connection may idle for the idle timeout.
        if self.deadline is None:
            self._start_deadline()
        elif not self.rfile.closed:
            try:
                self.connection.settimeout(self.server.keepalive)
                self.rfile.peek(1)  # the next request's first byte
            except socket.timeout:
                return b""  # idle too long: eventlet closes the connection
            except OSError:
                pass  # the read below meets the error again, and eventlet handles it
            self._start_deadline()
        return super()._read_request_line()

    def _start_deadline(self) -> None:
        self.deadline = eventlet.Timeout(self.request_timeout, RequestTimeout(
            f"the request did not arrive within {self.request_timeout:g} s"))

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ[DEADLINE] = self.deadline
        return environ

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except RequestTimeout as e:  # in the request line or headers: no application yet
            self.log_error("%s", e)
            self.close_connection = 1
            if getattr(self, "raw_requestline", None) or not isinstance(self.connection,
                                                                        ssl.SSLSocket):
                try:  # a courtesy, not worth waiting for; not for a TLS handshake left halfway
                    self.connection.settimeout(1.0)
                    self.wfile.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                                     b"Content-Length: 0\r\n\r\n")
                except OSError:
                    pass  # the client is gone as well
        finally:
            if self.deadline is not None:
                self.deadline.cancel()

    def log_error(self, format: str, *args) -> None:
        host, port = self.client_address[:2]
        log.info("client %s:%s: %s", host, port, format % args)

    def log_request(self, code="-", size="-") -> None:
        pass  # http.server's send_error would log the same bad request again


class _EventletLog:
    """Where eventlet.wsgi logs: each failure once, in the server's log; access lines if asked.

    eventlet logs everything at INFO to one log: access lines, its own start and stop lines,
    and the whole traceback of any error on a connection, even a client that hung up before
    its answer was sent. Without log_output, it drops all of that, errors too.
    """

    def __init__(self, access_log: bool) -> None:
        self.access = logging.getLogger("server.access") if access_log else None

    def info(self, message: str, *args) -> None:
        if message.startswith("Traceback"):
            error = message.rstrip().rsplit("\n", 1)[-1]
            if error.startswith(("BrokenPipeError", "ConnectionResetError")):
                log.info("a connection closed before its answer was sent (%s)", error)
            else:  # not the client: a bug, here or in eventlet
                log.error("eventlet.wsgi: %s", message.rstrip())
        elif self.access:
            self.access.info(message, *args)

    def error(self, message: str, *args) -> None:  # a client's broken chunked body, say
        log.info(message, *args)

    def debug(self, message: str, *args) -> None:
        pass


def serve(listener: socket.socket, app: Callable = application,
          socket_timeout: float = SOCKET_TIMEOUT, access_log: bool = False,
          idle_timeout: float = IDLE_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT,
          max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve app on listener until the accept loop is interrupted, then drain."""
    eventlet.wsgi.server(
        listener, app,
        log=_EventletLog(access_log),
        log_output=True,  # to _EventletLog, which drops what is not wanted
        debug=False,  # True (eventlet's default) sends tracebacks to clients
        socket_timeout=socket_timeout,
        keepalive=idle_timeout,
        max_size=max_connections,
        protocol=functools.partial(_Protocol, request_timeout=request_timeout),
    )


def allow_open_files(connections: int) -> int:
    """Raise this process's limit on open files to fit `connections`; how many fit."""
    spare = 64  # the listener, the log, the wakeup sockets, and some to spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < connections + spare:
        soft = connections + spare
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft - spare < connections:
        log.warning("the open-file limit (%d) allows %d connections at once, not %d",
                    soft, soft - spare, connections)
        return soft - spare
    return connections


def stop_gracefully_on(listener: socket.socket, *signums: int,
                       drain_timeout: float = DRAIN_TIMEOUT) -> None:
    """On these signals, stop accepting, answer the calls in flight, then return from serve().

    A second signal, or drain_timeout seconds without the calls in flight all answered,
    stops at once, with exit status 1.
    """
    serving = greenlet.getcurrent()
    # A Python signal handler runs in whichever green thread the signal interrupts, where
    # raising would kill a call in flight, and it does not wake eventlet's hub. So let Python
    # write the signal to a socket instead; a green thread reads it, and asks the hub to
    # interrupt the green thread that serves. eventlet.wsgi then closes idle connections and
    # waits for the active ones.
    wakeup, wakeup_writer = socket.socketpair()
    signal.set_wakeup_fd(wakeup_writer.fileno())

    def stop(status: int) -> None:
        eventlet.hubs.get_hub().schedule_call_global(0, serving.throw, SystemExit(status))

    def watch() -> None:
        with wakeup, wakeup_writer:  # both stay open while this green thread lives
            wakeup.recv(1)
            log.info("stopping: answering the calls in flight")
            # Closed now, not when the calls in flight are answered: meanwhile, new
            # connections are refused at once, and a balancer tries another server.
            listener.close()
            stop(0)
            with eventlet.Timeout(drain_timeout, False):
                wakeup.recv(1)
                log.warning("stopping now, without waiting for the calls in flight")
                return stop(1)
            log.warning("calls still in flight after %g s (--drain-timeout): stopping now",
                        drain_timeout)
            stop(1)

    eventlet.spawn_n(watch)
    for signum in signums:
        signal.signal(signum, lambda signum, frame: None)  # the wakeup socket does the work


def stop_when_orphaned(supervisor: int) -> None:
    """A worker whose supervisor is gone (killed, say) stops as on SIGTERM."""

    def watch() -> None:
        while os.getppid() == supervisor:
            eventlet.sleep(1.0)
        log.warning("the supervisor is gone")
        os.kill(os.getpid(), signal.SIGTERM)

    eventlet.spawn_n(watch)


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

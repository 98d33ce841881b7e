"""Serving a WSGI application on eventlet.wsgi, past eventlet's defaults: listen(), serve(),
a deadline for each request to arrive, one log line for each failure, TLS, the open-file
limit, and stopping gracefully.

Import this after eventlet.monkey_patch(), as server.py does.
"""

import logging
import dataclasses
import functools
import os
import re
import resource
import signal
import socket
import ssl
from typing import Callable, Optional

import eventlet
import eventlet.wsgi
import greenlet

from avrohttp.options import DRAIN_TIMEOUT, LISTEN_BACKLOG, ServerOptions
from avrohttp.wsgi import DEADLINE, RequestTimeout

log = logging.getLogger("avrohttp")


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind and listen. Port 0 picks a free port; a port in use is an error.

    reuse_port is for the workers of `--workers N` (see avrohttp.supervisor), which share one
    port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # eventlet sets SO_REUSEPORT by default, which would let a second server bind the same
    # port silently and take half the calls. Here a busy port is an error.
    return eventlet.listen((host, port), family, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)


def serve(listener: socket.socket, app: Callable, options: Optional[ServerOptions] = None,
          **changes) -> None:
    """Serve app on listener until the accept loop is interrupted, then drain.

    options: the limits and timeouts (ServerOptions() by default); keyword arguments change
    single fields of it, as in serve(listener, app, idle_timeout=5).
    """
    options = dataclasses.replace(options or ServerOptions(), **changes)
    eventlet.wsgi.server(
        listener, app,
        log=EventletLog(options.access_log),
        log_output=True,  # to EventletLog; HTTPProtocol then turns access lines off, or on
        debug=False,  # True (eventlet's default) sends tracebacks to clients
        socket_timeout=options.socket_timeout,
        keepalive=options.idle_timeout,
        max_size=options.max_connections,
        protocol=functools.partial(HTTPProtocol, request_timeout=options.request_timeout,
                                   access_log=options.access_log),
    )


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


class HTTPProtocol(eventlet.wsgi.HttpProtocol):
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

    def __init__(self, conn_state: list, server, request_timeout: float,
                 access_log: bool) -> None:
        self.request_timeout = request_timeout
        # eventlet keeps its log (EventletLog) only if log_output is set when it starts, but
        # while it is set, formats an access line for every request, a few µs each. Once
        # started, log_output decides only that: so it says whether access lines are wanted.
        server.log_output = access_log
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


# eventlet's own lines at start and stop ("(pid) wsgi starting up on ...", "wsgi exiting",
# "(pid) wsgi exited, ..."): not requests, so not access lines. The server logs its own.
_EVENTLET_START_STOP = re.compile(r"(\(\d+\) )?wsgi (starting up on|exiting|exited)")


class EventletLog:
    """Where eventlet.wsgi logs: each failure once, in the server's log; access lines if asked.

    eventlet logs everything at INFO to one log: access lines, its own start and stop lines,
    and the whole traceback of any error on a connection, even a client that hung up before
    its answer was sent. Without log_output, it drops all of that, errors too.
    """

    def __init__(self, access_log: bool) -> None:
        self.access = logging.getLogger("avrohttp.access") if access_log else None

    def info(self, message: str, *args) -> None:
        if message.startswith("Traceback"):
            error = message.rstrip().rsplit("\n", 1)[-1]
            if error.startswith(("BrokenPipeError", "ConnectionResetError")):
                log.info("a connection closed before its answer was sent (%s)", error)
            else:  # not the client: a bug, here or in eventlet
                log.error("eventlet.wsgi: %s", message.rstrip())
        elif self.access and not _EVENTLET_START_STOP.match(message):
            self.access.info(message, *args)

    def error(self, message: str, *args) -> None:  # a client's broken chunked body, say
        log.info(message, *args)

    def debug(self, message: str, *args) -> None:
        pass


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

"""What serving is, whichever loop serves: the part of a Server that both hosts share.

A host's Server (avrohttp.serve.Server on eventlet, avrohttp.serve_asyncio.Server on asyncio)
takes a ServerOptions and a responder, and run() does the whole life of a server: TLS, the
listening socket, the open-file limit, the metrics, the start-up line (or, for a worker of
--workers, the word to its supervisor), serving until stop() or a signal, and draining the
calls in flight. This base class does all of that but the serving, which each host does its
own way (serve()). As in uvicorn, a program or a test makes one and runs it:

    status = Server(ServerOptions(port=0), EchoResponder()).run()
"""

import logging
import math
import os
import random
import resource
import signal
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import avro.ipc

from avrohttp import tls
from avrohttp.options import LISTEN_BACKLOG, METRICS_DIR_ENV, ServerOptions

if TYPE_CHECKING:
    from avrohttp.answers import Rules
    from avrohttp.metrics import ServerMetrics

log = logging.getLogger("avrohttp")

# The signals that stop a server gracefully: Ctrl-C in a terminal, and what an orchestrator
# (or kill) sends. A second one stops it at once. SIGTERM alone waits for the shutdown delay
# first (--shutdown-delay): Ctrl-C is someone at a terminal, whom no balancer keeps waiting.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often a worker checks that its supervisor is still there.
ORPHAN_CHECK_SECONDS = 1.0
# Both hosts enforce their deadlines for clients (--request-timeout, --idle-timeout,
# --socket-timeout) with one sweep over the connections, not a timer per read: every second
# at most (see sweep_seconds). A deadline may so fire a sweep late, which is fine: the
# timeouts are there to take back a connection from a client that holds it, not to time it.
SWEEP_SECONDS = 1.0
# How long a connection may be served on, request after request, while others wait: its
# turn. A connection that yields after every request is fairest, but each yield is a trip
# through the hub, and each request then wakes the client alone: with two workers on two
# cores, that cost a quarter of the throughput. One millisecond keeps every wait short
# (a p99 of 20 to 35 ms with 50 connections on two eventlet workers; docs/speed.md). Both hosts
# take turns: avrohttp.serve between requests, avrohttp.asyncio_protocol between the calls
# of one read.
TURN_SECONDS = 0.001
# How long a connection that was told its time is up may take to say so (a 408) and close,
# before its socket is shut down under it.
GRACE_SECONDS = 1.0
# How far a connection's age limit (--max-connection-age) varies either way, at random, as in
# gRPC's MAX_CONNECTION_AGE (proposal A9): connections opened together, by a client pool or a
# rollout, then do not all close together, and their clients do not all connect again at once.
AGE_JITTER = 0.1


class CannotServeTLS(Exception):
    """The certificate, key or client CA file is missing, unreadable, or not what
    --certfile, --keyfile and --client-ca need."""


class Server:
    """One server: options, a responder, and the life of serving them (run()).

    ready_fd: for a worker of --workers (avrohttp.supervisor), the pipe on which to say that
    it listens; it then also stops once its supervisor is gone. (options.workers is the
    command line's: avrohttp.cli runs the supervisor, whose workers each run one Server.)
    """

    def __init__(self, options: ServerOptions, responder: avro.ipc.Responder,
                 ready_fd: Optional[int] = None) -> None:
        self.options = options
        self.responder = responder
        self.ready_fd = ready_fd
        self.name = responder.local_protocol.name
        # Set once the server listens, for a test or a program that runs it in a thread.
        self.address: Optional[Tuple[str, int]] = None
        self.listening = threading.Event()
        self.metrics: Optional["ServerMetrics"] = None
        self.rules: Optional["Rules"] = None  # set by serve(): its application's
        self.shutting_down = False  # set once it stops: see begin_shutdown()
        self.max_connections = options.max_connections
        self._supervisor = os.getppid()  # before saying it is ready: it may die any time after

    def run(self) -> int:
        """Serve until stopped: the exit status, 0 after a graceful stop, 1 if the server
        could not start, or could not answer the calls in flight in time."""
        options = self.options
        try:
            self.check_responder()
        except TypeError as e:  # avrohttp.async_handlers.AsyncHandlers, say
            log.error("cannot serve: %s", e)
            return 1
        if options.client_ca is not None and not options.certfile:  # else no one is checked
            log.error("cannot serve: client_ca needs certfile and keyfile: client certificates "
                      "are checked over HTTPS only")
            return 1
        context = None
        if options.certfile:
            try:
                context = tls_context(options.certfile, options.keyfile,
                                      options.client_ca)
            except CannotServeTLS as e:
                log.error("cannot serve HTTPS: %s", e)
                return 1
        try:
            listener = listen(options.host, options.port, reuse_port=self.ready_fd is not None)
        except OSError as e:
            log.error("cannot listen on %s:%s: %s", options.host, options.port, e.strerror or e)
            return 1
        with listener:
            self.address = listener.getsockname()[:2]
            self.max_connections = allow_open_files(options.max_connections)
            if options.metrics:
                self.metrics = server_metrics(self.responder)
            status = self.serve(listener, context)
        if self.metrics is not None:
            self.metrics.flush()  # the last calls, for the workers that go on
        if status == 0:
            log.info("stopped")
        return status

    def check_responder(self) -> None:
        """Raise TypeError, at start-up, for a responder that this host cannot serve."""

    def serve(self, listener: socket.socket, context: Optional[ssl.SSLContext]) -> int:
        """Serve on listener until stopped, then drain: the exit status. Each host's own."""
        raise NotImplementedError

    def stop(self, now: bool = False) -> None:
        """Stop accepting, answer the calls in flight, then return from run(); with now, or
        a second time, stop at once. During the shutdown delay, end it: the stop begins.
        Safe to call from any thread, and from a signal."""
        raise NotImplementedError

    def shut_down(self) -> None:
        """What SIGTERM does: with options.shutdown_delay, go on serving for that long, with
        GET /health/ready at 503 and every answer closing its connection, then stop(); with
        no delay, or once stopping, stop(). Safe to call from any thread; before the server
        serves, the same as stop()."""
        raise NotImplementedError

    def begin_shutdown(self) -> None:
        """Mark the server as stopping, in its own thread (or loop), as its shutdown delay or
        its stop begins: GET /health/ready answers 503 from now on, so that balancers send it
        no more calls, and each connection closes after its next answer, so that its client
        connects again, elsewhere. Each host also tells its open connections."""
        self.shutting_down = True
        if self.rules is not None:
            self.rules.shutting_down = True

    def log_delay(self) -> None:
        log.info("shutting down: /health/ready answers 503; still serving for %g s",
                 self.options.shutdown_delay)

    def log_delay_over(self, connections: int) -> None:
        log.info("no longer accepting: draining %d connection%s", connections,
                 "" if connections == 1 else "s")

    def ready(self, every: Callable[[float, Callable[[], None]], None]) -> None:
        """Say that the server is ready: the start-up line, or a worker's word to its
        supervisor. Called by serve() once it listens and stop() works, before any call.

        every(seconds, function): how the host runs a function periodically, for the worker's
        check of its supervisor and its metrics' flush.
        """
        if self.ready_fd is None:
            assert self.address is not None  # run() sets it before serve() calls this
            host, port = self.address
            log.info("%s server listening on %s://%s:%d/", self.name, self.options.scheme,
                     host, port)
        else:
            try:
                with open(self.ready_fd, "wb") as ready:
                    ready.write(b"1")
            except BrokenPipeError:  # the supervisor died before this worker was ready
                self.stop(now=True)
                return
            every(ORPHAN_CHECK_SECONDS, self._stop_if_orphaned)
        if self.metrics is not None and os.environ.get(METRICS_DIR_ENV) is not None:
            from avrohttp.metrics import FLUSH_SECONDS
            every(FLUSH_SECONDS, self.metrics.flush)
        self.listening.set()

    def _stop_if_orphaned(self) -> None:
        if os.getppid() != self._supervisor:  # a worker whose supervisor is gone (killed)
            log.warning("the supervisor is gone")
            self._supervisor = os.getppid()  # said once
            self.stop()


def connection_lifetime(max_age: Optional[float]) -> float:
    """How long one connection may be kept alive, in seconds: max_age times a factor drawn at
    random between 0.9 and 1.1 (AGE_JITTER), for each connection; without max_age, forever
    (math.inf). Past it, a host closes the connection after its next answer, never while it
    is idle: its client would find it closed only as it sends a call."""
    if max_age is None:
        return math.inf
    return max_age * random.uniform(1 - AGE_JITTER, 1 + AGE_JITTER)


def sweep_seconds(options: ServerOptions) -> float:
    """How often the deadlines are swept: a quarter of the shortest timeout, 1 s at most."""
    return min(SWEEP_SECONDS, options.request_timeout / 4, options.idle_timeout / 4,
               options.socket_timeout / 4)


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind and listen. Port 0 picks a free port; a port in use is an error.

    reuse_port is for the workers of `--workers N` (see avrohttp.supervisor), which share one
    port. (eventlet.listen sets SO_REUSEPORT for every port, which would let a second server
    bind the same port silently and take half the calls.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        # The default backlog of eventlet.listen (50) overflows under a burst of connections.
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def tls_context(certfile: str, keyfile: Optional[str], client_ca: Optional[str] = None
                ) -> ssl.SSLContext:
    """The TLS settings to serve HTTPS with this certificate (chain) and key, both PEM files;
    with client_ca, a PEM file of certificate authorities, mutual TLS: each client must
    present a certificate that one of them issued, or its handshake fails.

    Raises CannotServeTLS, with a message that names the file at fault where it can.
    """
    if keyfile is None:  # ServerOptions made in code: the command line checks it itself
        raise CannotServeTLS(f"{certfile} needs its private key: give keyfile too")
    # Python's recommended settings for a server: TLS 1.2 or later, no weak ciphers. It
    # trusts no certificate authority of its own: only client_ca's, if given.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        tls.load_certificate(context, certfile, keyfile)
        if client_ca is not None:
            tls.trust(context, client_ca)
    except tls.BadTLSFile as e:
        raise CannotServeTLS(str(e)) from e
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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


def server_metrics(responder: avro.ipc.Responder) -> Optional["ServerMetrics"]:
    """The server's metrics, installed as a hook of the responder (an avrohttp.Responder)."""
    if not hasattr(responder, "hooks"):
        log.warning("no metrics: %s is not an avrohttp.Responder", type(responder).__name__)
        return None
    # Imported only when wanted: without metrics, prometheus_client is never imported.
    from avrohttp.metrics import ServerMetrics
    # Set by the supervisor for its workers (--workers N): they share their counts there.
    metrics = ServerMetrics(responder, directory=os.environ.get(METRICS_DIR_ENV))
    responder.hooks.append(metrics)
    return metrics

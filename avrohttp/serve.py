"""The eventlet host: Server serves a responder on eventlet.wsgi, past eventlet's defaults:
deadlines for slow clients without a timer per read, fair turns between connections, fast
headers, one log line for each failure, and stopping gracefully. What every host does alike
(TLS, listening, the open-file limit, metrics, the start-up line) is avrohttp.hosting's;
each connection is avrohttp.eventlet_protocol's.

avrohttp.cli imports this after eventlet.monkey_patch(), as a program should.
"""

import functools
import logging
import os
import signal
import socket
import ssl
from typing import Callable, Iterable, Optional

try:
    import eventlet
    import eventlet.green.socket
    import eventlet.green.ssl
    import eventlet.wsgi
    import greenlet
except ModuleNotFoundError as e:  # one line: which extra to install
    from avrohttp import extras
    raise extras.missing("eventlet", e) from None

from avrohttp import hosting
from avrohttp.answers import Rules
from avrohttp.deadlines import Deadlines
from avrohttp.eventlet_protocol import EventletLog, HTTPProtocol
from avrohttp.options import ServerOptions
from avrohttp.async_handlers import refuse_async_handlers
from avrohttp.wsgi import DEADLINE, application_of

log = logging.getLogger("avrohttp")

# What stop() and shut_down() write to the wakeup socket, as Python writes each signal's
# number there (SIGTERM shuts down, after the shutdown delay; any other word stops).
_STOP = b"\0"
_SHUT_DOWN = bytes([signal.SIGTERM])


class Server(hosting.Server):
    """The eventlet host: serves a responder on eventlet.wsgi, past eventlet's defaults.

    run() it in a program that has called eventlet.monkey_patch() (avrohttp.cli does), so
    that handlers' own I/O cooperates; a test may run it unpatched, in a thread of its own.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stops = None  # the socket that stop() writes to, once serving
        self._early_stops = 0  # stop() calls before that
        self._deadlines: Optional[Deadlines] = None  # every open connection's, once serving

    def check_responder(self) -> None:
        refuse_async_handlers(self.responder)

    def serve(self, listener: socket.socket, context: Optional[ssl.SSLContext]) -> int:
        if not isinstance(listener, eventlet.greenio.GreenSocket):  # not monkey-patched
            listener = eventlet.greenio.GreenSocket(listener)
        if context is not None:
            # eventlet's own TLS socket, on the given settings: each connection's handshake
            # then happens in its own green thread, on first read.
            listener = eventlet.green.ssl.GreenSSLSocket(listener, server_side=True,
                                                         _context=context)
        self.rules = Rules(self.responder, self.options.max_body_bytes, self.metrics)
        application = application_of(self.rules)
        serving = greenlet.getcurrent()
        # A Python signal handler runs in whichever green thread the signal interrupts, where
        # raising would kill a call in flight, and it does not wake eventlet's hub. So let
        # Python write the signal to a socket instead, as stop() does from any thread; a
        # green thread reads it, and asks the hub to interrupt the green thread that serves.
        # eventlet.wsgi then closes idle connections and waits for the active ones.
        wakeup, stops = eventlet.green.socket.socketpair()
        self._deadlines = deadlines = Deadlines(self.options)
        watcher = eventlet.spawn(self._watch, wakeup, listener, serving, deadlines)
        try:
            signal.set_wakeup_fd(stops.fileno())
            signals = True
        except ValueError:  # not the main thread (a test's server): signals do not reach it
            signals = False
        else:
            for signum in hosting.STOP_SIGNALS:  # the wakeup socket does the work
                signal.signal(signum, lambda signum, frame: None)
        self._stops = stops
        for _ in range(self._early_stops):
            self.stop()
        # Before anyone is told to call:
        self.ready(every)
        try:
            self._serve_wsgi(listener, application, deadlines)
            status = 0
        except SystemExit as e:  # from _watch: the calls in flight were not all answered
            status = e.code if isinstance(e.code, int) else 1  # _watch's is an int
        finally:
            watcher.kill()
            if signals:
                signal.set_wakeup_fd(-1)
            self._stops = None
            with wakeup, stops:
                pass
        return status

    def stop(self, now: bool = False) -> None:
        stops = self._stops
        if stops is None:  # not serving yet: stop as soon as it is
            self._early_stops += 2 if now else 1
            return
        try:
            os.write(stops.fileno(), _STOP * 2 if now else _STOP)
        except OSError:
            pass  # stopped already

    def shut_down(self) -> None:
        stops = self._stops
        if stops is None:  # not serving yet: no balancer sends it calls
            return self.stop()
        try:
            os.write(stops.fileno(), _SHUT_DOWN)
        except OSError:
            pass  # stopped already

    def begin_shutdown(self) -> None:
        super().begin_shutdown()
        if self._deadlines is not None:
            for deadline in self._deadlines.connections:
                deadline.protocol.retiring = True

    def _watch(self, wakeup: socket.socket, listener: socket.socket,
               serving: greenlet.greenlet, deadlines: Deadlines) -> None:
        drain_timeout = self.options.drain_timeout
        shutdown_delay = self.options.shutdown_delay

        def stop(status: int) -> None:
            eventlet.hubs.get_hub().schedule_call_global(0, serving.throw, SystemExit(status))

        def stop_accepting() -> None:  # run by the hub
            # eventlet.wsgi ends its accept loop, then parks to wait for the calls in flight,
            # and the hub goes on here. Only then is the listener closed. Closed first, its
            # descriptor could be reused at once; eventlet would then end the accept loop by
            # itself, and the SystemExit would land in the wait, cutting the calls in flight
            # off. Closed now, not once they are answered: meanwhile, new connections are
            # refused at once, and a balancer tries another server.
            serving.throw(SystemExit(0))
            listener.close()

        word = wakeup.recv(1)
        self.begin_shutdown()
        if word == _SHUT_DOWN and shutdown_delay > 0:
            self.log_delay()
            with eventlet.Timeout(shutdown_delay, False):
                wakeup.recv(1)  # another word (a second SIGTERM, say) ends the delay now
            self.log_delay_over(len(deadlines.connections))
        else:
            log.info("stopping: answering the calls in flight")
        eventlet.hubs.get_hub().schedule_call_global(0, stop_accepting)
        with eventlet.Timeout(drain_timeout, False):
            wakeup.recv(1)
            log.warning("stopping now, without waiting for the calls in flight")
            return stop(1)
        log.warning("calls still in flight after %g s (--drain-timeout): stopping now",
                    drain_timeout)
        stop(1)

    def _serve_wsgi(self, listener: socket.socket, app: Callable,
                    deadlines: Deadlines) -> None:
        """Serve app on listener with eventlet.wsgi until the accept loop is interrupted,
        then drain."""
        options = self.options

        def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
            result = app(environ, start_response)
            deadline = environ[DEADLINE]
            deadline.answer()  # the answer goes out now: at the client's pace
            if deadline.protocol.retiring:  # so eventlet says "Connection: close", and closes
                deadline.protocol.close_connection = 1
            return result

        serve(listener, application, options, self.max_connections, deadlines,
              functools.partial(HTTPProtocol, deadlines=deadlines, access_log=options.access_log,
                                metrics=self.metrics, host=self))


def every(seconds: float, function: Callable[[], None]) -> None:
    """Call function every so many seconds, in a green thread, while the process lives."""

    def forever() -> None:
        while True:
            eventlet.sleep(seconds)
            function()

    eventlet.spawn_n(forever)


def serve(listener: socket.socket, application: Callable, options: ServerOptions,
          max_connections: int, deadlines: Deadlines, protocol: Callable) -> None:
    """Serve the application on listener with eventlet.wsgi, each connection with protocol,
    until the accept loop is interrupted, then drain (Server.serve)."""
    deadlines.start()
    try:
        eventlet.wsgi.server(
            listener, application,
            log=EventletLog(options.access_log),
            log_output=True,  # to EventletLog; HTTPProtocol then turns access lines off, or on
            debug=False,  # True (eventlet's default) sends tracebacks to clients
            # No timeout on the sockets: eventlet would arm a hub timer for every read and
            # write that waits, and cancel it after. Deadlines bounds the client instead.
            socket_timeout=None,
            # A number, for the "Keep-Alive: timeout=N" that HTTP/1.0 clients are sent;
            # HTTPProtocol, not eventlet, enforces it.
            keepalive=options.idle_timeout,
            max_size=max_connections,
            protocol=protocol,
        )
    finally:
        deadlines.stop()

"""The asyncio host: Server serves a responder through avrohttp.asgi on uvicorn's HTTP
(httptools) and uvloop, with every protection of the eventlet host.

uvicorn parses HTTP and runs the ASGI application; avrohttp.asyncio_protocol's HTTPProtocol
adds what uvicorn alone does not do to each connection (deadlines for slow clients, limits
on a request's head, fair turns), and this module the rest, as avrohttp.serve does for
eventlet: one sweep that enforces the deadlines, not a timer per request; a limit on the
connections served at once, past which new ones wait in the listen backlog; and stopping
gracefully. What every host does alike (TLS files, listening, the open-file limit, metrics,
the start-up line) is avrohttp.hosting's.
"""

import asyncio
import email.utils
import logging
import signal
import socket
import ssl
import time
from typing import Callable, Optional

try:
    import uvicorn
    import uvloop
    from uvicorn.server import ServerState
except ModuleNotFoundError as e:  # one line: which extra to install
    from avrohttp import extras
    raise extras.missing("asyncio", e) from None

from avrohttp import hosting
from avrohttp.answers import Rules, log_client
from avrohttp.asgi import application_of
from avrohttp.asyncio_protocol import HTTPProtocol, name_413_as_rfc_9110
from avrohttp.async_handlers import AsyncHandlers, refuse_async_handlers

log = logging.getLogger("avrohttp")
access_log = logging.getLogger("avrohttp.access")

# How long to wait before accepting again, after an accept failed (out of files, say).
ACCEPT_RETRY_SECONDS = 1.0
# How often a stop looks for connections that have become idle, to close them.
DRAIN_POLL_SECONDS = 0.05


class Server(hosting.Server):
    """The asyncio host: avrohttp.asgi on uvicorn's httptools protocol, on a uvloop loop.

    run() may be called in any thread; it makes an event loop of its own.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set = set()  # an HTTPProtocol for each open connection
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stops = 0  # stop() calls: the first drains, the second stops at once
        self._stopping: Optional[asyncio.Event] = None
        self._delay: Optional[asyncio.TimerHandle] = None  # the shutdown delay's end
        self._accept: Optional[_Acceptor] = None
        self._handshakes = 0  # connections accepted, not yet made (their TLS handshake, say)
        self.fast_rules: Optional[Rules] = None  # for CallFastPath, unless it is off

    def serve(self, listener: socket.socket, context: Optional[ssl.SSLContext]) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(self._serve(listener, context))

    def stop(self, now: bool = False) -> None:
        loop = self._loop
        if loop is None:  # not serving yet: stop as soon as it is
            self._stops += 2 if now else 1
            return
        try:
            loop.call_soon_threadsafe(self._stop, now)
        except RuntimeError:
            pass  # the loop is closed: stopped already

    def shut_down(self) -> None:
        loop = self._loop
        if loop is None:  # not serving yet: no balancer sends it calls
            return self.stop()
        try:
            loop.call_soon_threadsafe(self._shut_down)
        except RuntimeError:
            pass  # the loop is closed: stopped already

    async def _serve(self, listener: socket.socket, context: Optional[ssl.SSLContext]) -> int:
        loop = asyncio.get_running_loop()
        options = self.options
        self.rules = rules = Rules(self.responder, options.max_body_bytes, self.metrics)
        app = application_of(rules)
        if options.access_log:
            app = _with_access_log(app)
        else:  # with plain handlers, calls take the fast path (avrohttp.call_fast_path)
            try:
                refuse_async_handlers(self.responder)
                self.fast_rules = rules
            except AsyncHandlers:
                pass
        config = uvicorn.Config(
            app, http="httptools", lifespan="off", log_config=None, access_log=False,
            proxy_headers=False,  # uvicorn would trust X-Forwarded-For from 127.0.0.1
            server_header=False,
            # uvicorn's own keep-alive timer closes an idle connection, silently, as eventlet
            # does: --idle-timeout.
            # uvicorn types it int; it only ever hands it to loop.call_later, which takes any
            # number of seconds.
            timeout_keep_alive=options.idle_timeout)  # type: ignore[arg-type]
        config.load()
        name_413_as_rfc_9110()
        state = ServerState()
        self._date(state)

        def protocol() -> HTTPProtocol:
            return HTTPProtocol(config, state, self)

        self._stopping = asyncio.Event()
        listener.setblocking(False)
        accept = _Acceptor(self, loop, listener, protocol, context)
        accept.resume()
        signals = []
        for signum in hosting.STOP_SIGNALS:
            try:
                if signum == signal.SIGTERM:
                    loop.add_signal_handler(signum, self._shut_down)
                else:
                    loop.add_signal_handler(signum, self._stop, False)
                signals.append(signum)
            except (ValueError, RuntimeError):  # not the main thread (a test's server)
                break
        sweep = _every(loop, hosting.sweep_seconds(options), lambda: self._sweep(state))
        self._accept, self._loop = accept, loop
        early, self._stops = self._stops, 0
        if early:  # stop() before serving: stop now
            self._stop(now=early > 1)

        def every(seconds: float, function: Callable[[], None]) -> None:
            _every(loop, seconds, function)

        self.ready(every)
        try:
            await self._stopping.wait()
            status = await self._drain(accept)
        finally:
            sweep.cancel()
            for signum in signals:
                loop.remove_signal_handler(signum)
            for connection in list(self.connections):
                connection.transport.abort()
        return status

    def _shut_down(self) -> None:
        delay = self.options.shutdown_delay
        if self._stops or self._delay is not None or not delay > 0:
            return self._stop(False)
        assert self._loop is not None  # set before the loop runs this
        self._delay = self._loop.call_later(delay, self._stop, False)
        self.begin_shutdown()
        self.log_delay()

    def _stop(self, now: bool) -> None:
        accept, stopping = self._accept, self._stopping
        assert accept is not None and stopping is not None  # set before the loop runs this
        delay, self._delay = self._delay, None
        if delay is not None:  # over, or cut short
            delay.cancel()
        before = self._stops
        self._stops += 2 if now else 1
        if before == 0 and delay is None:  # a delay's end: its start marked the server
            self.begin_shutdown()
        if before == 0 and self._stops == 1:
            if delay is not None:
                self.log_delay_over(len(self.connections))
            else:
                log.info("stopping: answering the calls in flight")
            # Closed now, not once the calls are answered: meanwhile, new connections are
            # refused at once, and a balancer tries another server.
            accept.close()
        elif before < 2:
            log.warning("stopping now, without waiting for the calls in flight")
        stopping.set()

    async def _drain(self, accept: "_Acceptor") -> int:
        """Close each connection once it is idle; 0 once all are closed, 1 if they were not
        within the drain timeout, or if stop() came again."""
        accept.close()
        drain_timeout = self.options.drain_timeout
        ends = time.monotonic() + drain_timeout
        while self.connections:
            if self._stops > 1:
                return 1
            if time.monotonic() >= ends:
                log.warning("calls still in flight after %g s (--drain-timeout): stopping now",
                            drain_timeout)
                return 1
            for connection in list(self.connections):
                connection.close_if_idle()
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return 1 if self._stops > 1 else 0

    def _sweep(self, state: ServerState) -> None:
        self._date(state)
        now = time.monotonic()
        for connection in list(self.connections):
            connection.check_deadlines(now)

    def _date(self, state: ServerState) -> None:
        # The Date header of every answer, as uvicorn's own server sets it once a second.
        state.default_headers = [(b"date", email.utils.formatdate(usegmt=True).encode())]

    def begin_shutdown(self) -> None:
        super().begin_shutdown()
        for connection in self.connections:
            connection.retire()

    def connection_closed(self) -> None:
        """A connection closed, or never opened: room for the next one."""
        if self._accept is not None:
            self._accept.resume()


class _Acceptor:
    """Accepts connections while fewer than max_connections are open; past that, new ones
    wait in the listen backlog, as on eventlet (uvicorn's limit_concurrency would answer
    them 503 instead)."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop,
                 listener: socket.socket, protocol: Callable, context: Optional[ssl.SSLContext]):
        self.server = server
        self.loop = loop
        self.listener = listener
        self.protocol = protocol
        self.context = context
        self.reading = False
        self.closed = False
        options = server.options
        # A TLS handshake is part of a connection's first request, as on eventlet.
        self.handshake_timeout = min(options.idle_timeout, options.request_timeout)

    def resume(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.loop.add_reader(self.listener.fileno(), self.accept)

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.listener.fileno())

    def close(self) -> None:
        if not self.closed:
            self.pause()
            self.closed = True
            self.listener.close()

    def accept(self) -> None:
        server = self.server
        while len(server.connections) + server._handshakes < server.max_connections:
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of files, say
                # The connection stays in the backlog, and the listener readable: accepting
                # again at once would spin, logging this line as fast as the loop turns. So,
                # as asyncio's own servers do, wait a second first.
                log.warning("cannot accept a connection: %s", e.strerror or e)
                self.pause()
                self.loop.call_later(ACCEPT_RETRY_SECONDS, self.resume)
                return
            server._handshakes += 1
            self.loop.create_task(self.connect(sock, address))
        self.pause()  # at the limit: HTTPProtocol.connection_lost resumes

    async def connect(self, sock: socket.socket, address: tuple) -> None:
        try:
            await self.loop.connect_accepted_socket(
                self.protocol, sock, ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout if self.context else None)
        except (OSError, asyncio.TimeoutError) as e:  # ssl.SSLError is an OSError
            reason = getattr(e, "reason", None) or (
                "the handshake did not come in time" if isinstance(e, asyncio.TimeoutError)
                else type(e).__name__)
            log_client(address, f"TLS failed: {reason}")
            sock.close()
        finally:
            self.server._handshakes -= 1
        self.resume()  # if paused at the limit: this one is open, or its place is free again


class _Repeat:
    """A function called every so many seconds on a loop (_every), until cancel()."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float,
                 function: Callable[[], None]) -> None:
        self.loop, self.seconds, self.function = loop, seconds, function
        self.handle = loop.call_later(seconds, self.run)

    def run(self) -> None:
        self.handle = self.loop.call_later(self.seconds, self.run)
        self.function()

    def cancel(self) -> None:
        self.handle.cancel()


def _every(loop: asyncio.AbstractEventLoop, seconds: float,
           function: Callable[[], None]) -> _Repeat:
    """Call function every so many seconds on the loop; returns a handle whose cancel()
    stops it."""
    return _Repeat(loop, seconds, function)


def _with_access_log(app: Callable) -> Callable:
    """The application, with one line per request in avrohttp.access, in eventlet.wsgi's
    format (the size is the answer body's bytes)."""

    async def logged(scope: dict, receive: Callable, send: Callable) -> None:
        started = time.monotonic()
        answer = {"status": 0, "bytes": 0}

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            else:
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        await app(scope, receive, counting_send)
        client = scope.get("client") or ("-",)
        access_log.info('%s - - [%s] "%s %s HTTP/%s" %d %d %.6f', client[0],
                        time.strftime("%d/%b/%Y %H:%M:%S"), scope["method"], scope["path"],
                        scope["http_version"], answer["status"], answer["bytes"],
                        time.monotonic() - started)

    return logged

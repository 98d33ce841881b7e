"""The asyncio host: Server serves a responder through avrohttp.asgi on uvicorn's HTTP
(httptools) and uvloop, with every protection of the eventlet host.

uvicorn parses HTTP and runs the ASGI application; this module adds what uvicorn alone does
not do, as avrohttp.serve does for eventlet: a deadline on each request's arrival (uvicorn has
none on the headers: a client that trickles them would hold its connection forever), on the
first request and on an answer that the client does not read, all enforced by one sweep, not
a timer per request; a limit on the connections served at once, past which new ones wait in
the listen backlog; one log line for each failure; and stopping gracefully. What every host
does alike (TLS files, listening, the open-file limit, metrics, the start-up line) is
avrohttp.hosting's.
"""

import asyncio
import email.utils
import fcntl
import logging
import socket
import ssl
import struct
import termios
import time
from typing import Callable, Optional

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from avrohttp import hosting
from avrohttp.answers import RequestTimeout, log_client
from avrohttp.answers import Rules
from avrohttp.asgi import DEADLINE, application_of
from avrohttp.call_fast_path import CallFastPath
from avrohttp.responder import AsyncHandlers, refuse_async_handlers

log = logging.getLogger("avrohttp")
access_log = logging.getLogger("avrohttp.access")

# How long to wait before accepting again, after an accept failed (out of files, say).
ACCEPT_RETRY_SECONDS = 1.0
# How often a stop looks for connections that have become idle, to close them.
DRAIN_POLL_SECONDS = 0.05
# uvicorn writes each status line from Python's http.HTTPStatus, which before Python 3.13
# names 413 "Request Entity Too Large". The answers' own status (avrohttp.answers) is RFC
# 9110's, which eventlet.wsgi sends as given: so a client reads the same line from both hosts.
STATUS_LINE[413] = b"HTTP/1.1 413 Content Too Large\r\n"
# How long one read's pipelined calls may be answered on the fast path while other
# connections wait: a turn, as on the eventlet host (avrohttp.serve.TURN_SECONDS). The fast
# path answers a call inside the read that brought it, so a client that pipelines hundreds
# of calls in one read would otherwise hold the loop for all of them. Past its turn, the rest
# of the read goes through uvicorn's ASGI path: a task per call, each in the loop's queue
# with every other connection's.
TURN_SECONDS = 0.001
# The limits on a request's head, and their answers: eventlet.wsgi's (a request line of 8 KiB,
# a header line of 8 KiB, 64 KiB of headers), where uvicorn has none: httptools would hold
# a header line as long as the client sends it.
MAX_REQUEST_LINE = MAX_HEADER_LINE = 8192
MAX_TOTAL_HEADER_SIZE = 65536
# eventlet.wsgi reads a header line up to http.client's limit, then checks its own: a line
# still arriving is refused once this long.
LINE_READ = 65537
URI_TOO_LONG = (b"HTTP/1.0 414 Request URI Too Long\r\nConnection: close\r\n"
                b"Content-Length: 0\r\n\r\n")
HEADER_LINE_TOO_LONG = (b"HTTP/1.0 400 Header Line Too Long\r\nConnection: close\r\n"
                        b"Content-length: 0\r\n\r\n")
HEADERS_TOO_LARGE = (b"HTTP/1.0 400 Headers Too Large\r\nConnection: close\r\n"
                     b"Content-length: 0\r\n\r\n")
# The answer to a request that did not arrive in time, written before any application ran.
REQUEST_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                          b"Content-Length: 0\r\n\r\n")


class Server(hosting.Server):
    """The asyncio host: avrohttp.asgi on uvicorn's httptools protocol, on a uvloop loop.

    run() may be called in any thread; it makes an event loop of its own.
    """

    loop_name = "asyncio"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set = set()  # an HTTPProtocol for each open connection
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stops = 0  # stop() calls: the first drains, the second stops at once
        self._stopping: Optional[asyncio.Event] = None
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

    async def _serve(self, listener: socket.socket, context: Optional[ssl.SSLContext]) -> int:
        loop = asyncio.get_running_loop()
        options = self.options
        rules = Rules(self.responder, options.max_body_bytes, self.metrics)
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
            timeout_keep_alive=options.idle_timeout)
        config.load()
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

    def _stop(self, now: bool) -> None:
        before = self._stops
        self._stops += 2 if now else 1
        if before == 0 and self._stops == 1:
            log.info("stopping: answering the calls in flight")
            # Closed now, not once the calls are answered: meanwhile, new connections are
            # refused at once, and a balancer tries another server.
            self._accept.close()
        elif before < 2:
            log.warning("stopping now, without waiting for the calls in flight")
        self._stopping.set()

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

    @property
    def stopping(self) -> bool:
        return self._stops > 0

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


class _UvicornLog:
    """Where uvicorn's protocol logs: its warnings are about clients, which HTTPProtocol
    logs itself, in one line each; its errors (an exception in the application: a bug) go
    to the server's log."""

    level = logging.INFO  # uvicorn compares it with its TRACE level

    def warning(self, message: str, *args) -> None:
        pass

    def error(self, message: str, *args, **kwargs) -> None:
        log.error("uvicorn: " + message, *args, **kwargs)

    def log(self, level: int, message: str, *args) -> None:
        pass


_UVICORN_LOG = _UvicornLog()


class _HeadRefused(Exception):
    """Raised in a parser callback to stop httptools at a head over its limits."""


class _Discard:
    """The parser of a connection that was told 408: what the client still sends is read,
    and dropped (a lingering close)."""

    def feed_data(self, data: bytes) -> None:
        pass


class HTTPProtocol(CallFastPath):
    """uvicorn's HTTP/1.1 protocol (httptools), with deadlines for slow clients, the
    connection limit, metrics of the open connections, and each failure logged once.

    The deadlines: the request line, the headers and the body must arrive within
    request_timeout of the request's first byte (of the connection's start, for its first
    request, whose first byte must also come within idle_timeout); an answer must be taken
    by the client within socket_timeout; a kept-alive connection may idle for idle_timeout
    (uvicorn's own keep-alive timer). The Server's sweep checks each connection
    (check_deadlines): per request, this costs a clock read.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState, server: Server) -> None:
        super().__init__(config, state, {})
        self.access_log = False  # uvicorn's own; the server's is avrohttp.access
        self.logger = _UVICORN_LOG
        self.host = server
        self.options = server.options
        self.rules = server.fast_rules
        self.began: Optional[float] = None  # when the request now arriving began
        self.requests = 0
        self.turn_ends: Optional[float] = None  # when this read's turn is over
        self.expired: Optional[RequestTimeout] = None  # the body came too slowly (asgi)
        self.stalled: Optional[float] = None  # since when the answer has waited on the client
        self.told: Optional[float] = None  # when a connection told its time is up is cut
        self.tls_socket: Optional[int] = None  # the descriptor, for a TLS connection
        # The head's limits (data_received, check_head):
        self.reading_head = False  # a request's head is arriving
        self.big_read = False  # the last read was as long as a header line may be
        self.head_reads = 0  # reads of this head before the last
        self.line_bytes = 0  # bytes of the head's line now arriving
        self.head_bytes = 0  # bytes of the head so far (an estimate: see data_received)
        self.head_lines = False  # the request line is in
        self.refusal: Optional[bytes] = None  # the answer to a head over its limits

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self.began = time.monotonic()  # the first request must come from now
        if self.scheme == "https":  # see unsent()
            self.tls_socket = transport.get_extra_info("socket").fileno()
        self.host.connections.add(self)
        if self.host.metrics is not None:
            self.host.metrics.connection_opened()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        super().connection_lost(exc)
        self.host.connections.discard(self)
        if self.host.metrics is not None:
            self.host.metrics.connection_closed()
        self.host.connection_closed()

    def send_400_response(self, msg: str) -> None:  # uvicorn's, for a request that won't parse
        if self.refusal is not None:  # a head over its limits (check_head): not a parse error
            return self.refuse_head(self.refusal)
        log_client(self.client or ("-", "-"), f"400 Bad Request: {msg}")
        if self.host.metrics is not None:
            self.host.metrics.count_status(400)
        super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        self.turn_ends = None  # this read's turn starts with its first call
        # A head in one read of less than a line's limit is within every limit: the common
        # case costs a comparison. Others are checked once complete (on_headers_complete),
        # and a head that spans reads is measured as it comes, lest a line grow without end.
        self.big_read = len(data) >= MAX_HEADER_LINE
        super().data_received(data)
        if self.reading_head and self.refusal is None:
            self.head_reads += 1
            newline = data.rfind(b"\n")
            if newline < 0:
                self.line_bytes += len(data)
            else:
                self.line_bytes = len(data) - newline - 1
                self.head_lines = True
            self.head_bytes += len(data)
            if self.line_bytes >= (LINE_READ if self.head_lines else MAX_REQUEST_LINE):
                self.refuse_head(HEADER_LINE_TOO_LONG if self.head_lines else URI_TOO_LONG)
            elif self.head_bytes > MAX_REQUEST_LINE + MAX_TOTAL_HEADER_SIZE:
                self.refuse_head(HEADERS_TOO_LARGE)

    def check_head(self) -> Optional[bytes]:
        """The answer to a head over eventlet.wsgi's limits, or None."""
        self.head_reads = self.line_bytes = self.head_bytes = 0
        self.head_lines = False
        if len(self.url) + len(self.parser.get_method()) + 11 >= MAX_REQUEST_LINE:
            return URI_TOO_LONG  # the request line: "POST " + url + " HTTP/1.1\r\n"
        total = 2  # the blank line
        for name, value in self.headers:
            line = len(name) + len(value) + 4  # "name: value\r\n"
            if line >= MAX_HEADER_LINE:
                return HEADER_LINE_TOO_LONG
            total += line
        return HEADERS_TOO_LARGE if total > MAX_TOTAL_HEADER_SIZE else None

    def refuse_head(self, answer: bytes) -> None:
        status = answer[9:answer.index(b"\r")].decode()
        log_client(self.client or ("-", "-"), status)
        if self.host.metrics is not None:
            self.host.metrics.count_status(int(status[:3]))
        self.refusal = answer
        self.reading_head = False
        self.began = None
        self.parser = _Discard()
        self.transport.write(answer)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self.reading_head = False
        if self.big_read or self.head_reads:
            refusal = self.check_head()
            if refusal is not None:
                self.refusal = refusal
                raise _HeadRefused()  # httptools stops; uvicorn calls send_400_response
        if self.rules is not None:  # calls may take the fast path: within this read's turn
            now = time.monotonic()
            if self.turn_ends is None:
                self.turn_ends = now + TURN_SECONDS
            elif now >= self.turn_ends:  # the turn is over: this call, and the rest, by ASGI
                return HttpToolsProtocol.on_headers_complete(self)
        super().on_headers_complete()

    def on_message_begin(self) -> None:
        self.reading_head = True
        super().on_message_begin()
        self.scope[DEADLINE] = self
        if self.requests:  # the first request's time counts from the connection's start
            self.began = time.monotonic()
        self.requests += 1

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.began = None  # the request is in: the rest is the server's time

    def close_if_idle(self) -> None:
        """For a stop: close the connection if no request is arriving or being answered;
        otherwise, once its answer is sent."""
        cycle = self.cycle
        if (self.began is None or self.requests == 0) and (cycle is None
                                                           or cycle.response_complete):
            if self.tls_socket is not None and not self.unsent():
                # Closing a TLS connection waits for the client's own close_notify, which an
                # idle client never sends: the stop would wait for the drain timeout.
                self.transport.abort()
            else:
                self.transport.close()
        elif cycle is not None:
            cycle.keep_alive = False

    def unsent(self) -> int:
        """How many bytes of an answer wait on the client."""
        size = self.transport.get_write_buffer_size()
        if size or self.tls_socket is None:
            return size
        # uvloop's TLS transport says 0: it encrypts an answer at once, and the TCP transport
        # under it, out of reach, holds the bytes. The kernel's send queue shows them.
        try:
            return struct.unpack("i", fcntl.ioctl(self.tls_socket, termios.TIOCOUTQ,
                                                  b"\0\0\0\0"))[0]
        except OSError:  # closed
            return 0

    def check_deadlines(self, now: float) -> None:
        """The sweep's look at this connection."""
        options = self.options
        if self.told is not None:  # told, and still there: cut it off
            if now >= self.told:
                self.transport.abort()
            return
        if self.unsent():
            if self.stalled is None:
                self.stalled = now
            elif now - self.stalled >= options.socket_timeout:
                log_client(self.client, f"the answer was not read within "
                                        f"{options.socket_timeout:g} s")
                self.transport.abort()
                return
        else:
            self.stalled = None
        began = self.began
        if began is None:
            return
        if now - began >= options.request_timeout:
            self.request_timed_out(now)
        elif not self.requests and now - began >= options.idle_timeout:
            self.transport.close()  # not a byte came: idle, closed without a word

    def request_timed_out(self, now: float) -> None:
        error = RequestTimeout(
            f"the request did not arrive within {self.options.request_timeout:g} s")
        self.began = None
        self.told = now + hosting.GRACE_SECONDS
        if self.body_too_slow(error):  # a call on the fast path, in its body: 408 now
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            # In the body: the application answers 408 (avrohttp.answers.Rules.too_slow).
            self.expired = error
            cycle.message_event.set()
            return
        # In the request line or the headers: no application yet.
        log_client(self.client, error)
        if self.host.metrics is not None:
            self.host.metrics.count_status(408)
        self.parser = _Discard()
        transport = self.transport
        transport.write(REQUEST_TIMEOUT_ANSWER)
        # Let the client read its answer before the connection closes: a client still
        # sending would otherwise get a reset, which may drop the 408 before it is read. So,
        # as Apache does, say that nothing more will be sent, and read and drop what comes,
        # until the client closes or the grace period ends. Not under TLS, whose close is the
        # TLS layer's business.
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()


def _every(loop: asyncio.AbstractEventLoop, seconds: float,
           function: Callable[[], None]) -> asyncio.TimerHandle:
    """Call function every so many seconds on the loop; returns a handle whose cancel()
    stops it."""

    class Repeat:
        handle: asyncio.TimerHandle

        def run(self) -> None:
            self.handle = loop.call_later(seconds, self.run)
            function()

        def cancel(self) -> None:
            self.handle.cancel()

    repeat = Repeat()
    repeat.handle = loop.call_later(seconds, repeat.run)
    return repeat


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

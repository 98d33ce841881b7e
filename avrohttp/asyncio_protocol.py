"""The asyncio host's HTTP/1.1 connection: uvicorn's httptools protocol with what uvicorn
alone lacks, as avrohttp.eventlet_protocol's HTTPProtocol adds it to eventlet.wsgi: deadlines
for slow clients (uvicorn has none on a request's head: a client that trickles it would hold
its connection forever), eventlet.wsgi's limits on a request's head, fair turns between
connections, the metrics of open connections, and each failure of a client logged once.
avrohttp.serve_asyncio.Server makes one for each connection, and sweeps their deadlines.
"""

import asyncio
import fcntl
import logging
import struct
import termios
import time
from typing import TYPE_CHECKING, Optional

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from avrohttp import hosting
from avrohttp.answers import RequestTimeout, log_client
from avrohttp.asgi import DEADLINE
from avrohttp.call_fast_path import CallFastPath

if TYPE_CHECKING:
    from avrohttp.serve_asyncio import Server

log = logging.getLogger("avrohttp")

# uvicorn writes each status line from Python's http.HTTPStatus, which before Python 3.13
# names 413 "Request Entity Too Large". The answers' own status (avrohttp.answers) is RFC
# 9110's, which eventlet.wsgi sends as given: so a client reads the same line from both hosts.
RFC_9110_413 = b"HTTP/1.1 413 Content Too Large\r\n"
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


def name_413_as_rfc_9110() -> None:
    """Make uvicorn's status line for 413 the one eventlet.wsgi sends (see RFC_9110_413).
    This sets a global of uvicorn's, for the whole process: the Server does it as it starts,
    never on import."""
    STATUS_LINE[413] = RFC_9110_413


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

    def __init__(self, config: uvicorn.Config, state: ServerState, server: "Server") -> None:
        super().__init__(config, state, {})
        self.access_log = False  # uvicorn's own; the server's is avrohttp.access
        # uvicorn types it as a Logger; it calls only what _UvicornLog has.
        self.logger = _UVICORN_LOG  # type: ignore[assignment]
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

    # As uvicorn's own: asyncio's types give any protocol a BaseTransport; a TCP server's
    # protocol is given a Transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.began = time.monotonic()  # the first request must come from now
        self.retiring = self.host.shutting_down
        # Once a request begins past this, its answer is the connection's last.
        self.closes_at = self.began + hosting.connection_lifetime(
            self.options.max_connection_age)
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
        self.parser = _Discard()  # type: ignore[assignment]  # uvicorn calls only feed_data
        self.transport.write(answer)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self.reading_head = False
        if self.big_read or self.head_reads:
            refusal = self.check_head()
            if refusal is not None:
                self.refusal = refusal
                raise _HeadRefused()  # httptools stops; uvicorn calls send_400_response
        # The fast path answers a call inside the read that brought it, so a client that
        # pipelines hundreds of calls in one read would hold the loop for all of them. So a
        # read's calls take the fast path for a turn (hosting.TURN_SECONDS); the rest go
        # through uvicorn's ASGI path, a task per call, in the loop's queue with the others'.
        if self.rules is not None:
            now = time.monotonic()
            if self.turn_ends is None:
                self.turn_ends = now + hosting.TURN_SECONDS
            elif now >= self.turn_ends:  # the turn is over: this call, and the rest, by ASGI
                HttpToolsProtocol.on_headers_complete(self)
                return self.retire_request()
        super().on_headers_complete()
        self.retire_request()

    def retire(self) -> None:
        """Close the connection after its next answer, whichever request it answers, and
        until then keep it: the server is stopping. (An idle connection is closed by the
        drain, once the server stops accepting.) A connection that grows old retires as its
        next request begins (on_message_begin)."""
        self.retiring = True
        cycle = self.cycle  # the last request read, through ASGI
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
        # A call on the fast path reads `retiring` as it answers (write_answer).

    def retire_request(self) -> None:
        """A request just read through ASGI, on a retiring connection, ends it."""
        if self.retiring and self.call is None and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_begin(self) -> None:
        self.reading_head = True
        super().on_message_begin()
        # A key of ours, as ASGI allows; uvicorn's type of the scope lists only ASGI's own.
        self.scope[DEADLINE] = self  # type: ignore[literal-required]
        if self.requests:  # the first request's time counts from the connection's start
            self.began = now = time.monotonic()
            if now >= self.closes_at:  # old enough (--max-connection-age)
                self.retiring = True
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
        self.parser = _Discard()  # type: ignore[assignment]  # uvicorn calls only feed_data
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



"""The eventlet host's HTTP/1.1 connection: eventlet.wsgi's HttpProtocol with what eventlet
alone lacks, as avrohttp.asyncio_protocol adds it to uvicorn's: deadlines for slow clients
(avrohttp.deadlines), fair turns between connections, fast headers (avrohttp.headers), and
each failure of a client logged once (EventletLog, where eventlet.wsgi logs).
avrohttp.serve's Server serves each connection with one.
"""

import logging
import re
import socket
import ssl
import time
from typing import Optional

import eventlet
import eventlet.green.socket
import eventlet.wsgi

from avrohttp import headers, hosting
from avrohttp.deadlines import AnswerTimeout, ClientDeadline, Deadlines
from avrohttp.wsgi import DEADLINE, RequestTimeout

log = logging.getLogger("avrohttp")


class HTTPProtocol(eventlet.wsgi.HttpProtocol):
    """eventlet.wsgi's HTTP handling, with deadlines for slow clients, fair turns between
    connections, headers read without the email package (avrohttp.headers), and each
    failure of a client logged once, in one line.

    - eventlet's socket_timeout bounds each read, not the request: a client that sends a
      byte every few seconds keeps its connection, and a green thread, forever. Here the
      request line, the headers and the body must arrive within request_timeout of the
      request's first byte (of the connection, for its first request), a keep-alive
      connection may idle for idle_timeout, and an answer must be taken within
      socket_timeout. Deadlines enforces these, without a timer per read or write.
    - eventlet does each TLS handshake on the connection's first read, and lets its
      ssl.SSLError escape; the hub then prints a traceback, one for each client that speaks
      plain HTTP to the port or does not trust the certificate (eventlet issue 620). And a
      request line that does not parse is reported by the standard library's http.server, in
      two lines written straight to stderr.

    host: the hosting.Server, whose shutdown retires its connections (see retiring).
    """

    def __init__(self, conn_state: list, server, deadlines: Deadlines,
                 access_log: bool, metrics=None,
                 host: Optional[hosting.Server] = None) -> None:
        # Whether the next answer is this connection's last, said with "Connection: close"
        # (avrohttp.serve's application reads it): the server is shutting down, or the
        # connection is older than closes_at (--max-connection-age) as a request begins.
        self.retiring = host is not None and host.shutting_down
        self.metrics = metrics
        self.deadlines = deadlines
        self.deadline = ClientDeadline(deadlines, self, conn_state[1])
        self.closes_at = self.deadline.started + hosting.connection_lifetime(
            host.options.max_connection_age if host is not None else None)
        self.requests = 0
        self.turn_ends = 0.0  # when this connection's turn is over: see _read_request_line
        self.closing = False  # after this answer: see close_after_answer
        # eventlet keeps its log (EventletLog) only if log_output is set when it starts, but
        # while it is set, formats an access line for every request, a few µs each. Once
        # started, log_output decides only that: so it says whether access lines are wanted.
        server.log_output = access_log
        deadlines.connections.add(self.deadline)
        try:
            super().__init__(conn_state, server)  # this serves the whole connection
        finally:
            deadlines.connections.discard(self.deadline)

    def parse_request(self) -> bool:
        # http.server's, reading the headers at a fraction of the cost (avrohttp.headers).
        try:
            return headers.parse_request(self)
        except (eventlet.wsgi.HeaderLineTooLong, eventlet.wsgi.HeadersTooLarge) as e:
            # eventlet.wsgi answers 400, and would log nothing.
            self.refused("400 Header Line Too Long"
                         if isinstance(e, eventlet.wsgi.HeaderLineTooLong)
                         else "400 Headers Too Large")
            raise

    def refused(self, status: str) -> None:
        """Log a request that eventlet.wsgi refuses itself, as Rules logs its own."""
        self.log_error("%s", status)
        if self.metrics is not None:
            self.metrics.count_status(int(status[:3]))

    def handle(self) -> None:
        if self.metrics is not None:
            self.metrics.connection_opened()
        try:
            super().handle()
        except ssl.SSLError as e:  # the reason names the problem: HTTP_REQUEST, say
            self.log_error("TLS failed: %s", e.reason or type(e).__name__)
            self.linger_after_alert()
        except ValueError:
            # When eventlet.wsgi stops, it shuts down the idle connections under their green
            # threads (and marks them STATE_CLOSE). A plain socket then reads as closed; a
            # TLS one raises ValueError.
            if self.conn_state[2] != eventlet.wsgi.STATE_CLOSE:
                raise
        finally:
            if self.metrics is not None:
                self.metrics.connection_closed()

    def _read_request_line(self) -> bytes:
        # eventlet's own sets a socket timeout twice per request, for the idle timeout and
        # then for the request; here the deadline does both.
        if self.rfile.closed:
            self.close_connection = 1
            return b""
        if self.requests:  # a keep-alive connection, between requests
            if len(self.deadlines.connections) > 1 and time.monotonic() >= self.turn_ends:
                # Fair turns: without this, a connection whose next request has already come
                # is served again at once, and again, while the others wait (seconds, with
                # two processes on one port). So once its turn is over, it lets the others
                # run first. With no other connection, that would only cost a hub cycle
                # (10-15% at one connection), so it is skipped.
                eventlet.sleep(0)
                self.turn_ends = time.monotonic() + hosting.TURN_SECONDS
            self.deadline.idle()
        try:
            self.rfile.peek(1)  # the request's first byte (and, first, any TLS handshake)
        except RequestTimeout:
            raise
        except socket.timeout:  # idle too long (Deadlines): eventlet closes the connection
            return b""
        except ssl.SSLError:
            raise
        except OSError:
            pass  # the read below meets the error again
        if self.requests:
            now = time.monotonic()
            if now >= self.closes_at:  # old enough: this request's answer is its last
                self.retiring = True
            self.deadline.request(since=now)
        else:  # the first request's time counts from the connection's start
            self.deadline.request(since=self.deadline.started)
        self.requests += 1
        try:
            line = self.rfile.readline(self.server.url_length_limit)
            if len(line) >= self.server.url_length_limit:  # eventlet.wsgi answers 414
                self.refused("414 Request URI Too Long")
            return line
        except eventlet.wsgi.greenio.SSL.ZeroReturnError:
            pass
        except OSError as e:
            if e.errno not in eventlet.wsgi.BROKEN_SOCK | eventlet.wsgi.BAD_SOCK:
                raise
        return b""

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ[DEADLINE] = self.deadline
        if "content-type" not in self.headers:
            # eventlet.wsgi says "text/plain" for a request without one (the email package's
            # default), and a call without a Content-Type is accepted: so it is not given.
            del environ["CONTENT_TYPE"]
        return environ

    def close_after_answer(self) -> None:
        """The application's answer ends the connection ("Connection: close": a 413, whose
        body is not wanted, say). eventlet.wsgi takes no notice of that header: it would add
        its own (a contradicting "keep-alive", or a second "close"), then read the rest of
        the body, however large, to go on with the connection. So the header is left to
        eventlet, which says "close" once for a connection it closes; and the connection is
        closed after the answer, with a lingering close (linger) for a client still sending.
        """
        self.close_connection = 1
        self.closing = True

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
            if self.closing:
                self.closing = False
                # The client has a grace period to take its answer and go, then is cut off.
                self.deadline.at = time.monotonic() + hosting.GRACE_SECONDS
                self.deadline.phase = self.deadline.TOLD
                try:
                    self.linger()
                except OSError:
                    pass  # the client is gone
        except RequestTimeout as e:  # in the request line or headers: no application yet
            self.log_error("%s", e)
            self.close_connection = 1
            if self.metrics is not None:
                self.metrics.count_status(408)
            if getattr(self, "raw_requestline", None) or not isinstance(self.connection,
                                                                        ssl.SSLSocket):
                try:  # a courtesy, not worth waiting for (Deadlines cuts it after a grace
                    # period); not for a TLS handshake left halfway
                    self.wfile.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                                     b"Content-Length: 0\r\n\r\n")
                    self.linger()
                except OSError:
                    pass  # the client is gone as well

    def linger(self) -> None:
        """Let the client read the answer before the connection closes (a lingering close).

        A slow client is still sending when it is told 408. Closing a socket with bytes
        unread makes the kernel send a reset, and a reset may make the client's kernel drop
        the 408 before the client reads it. So, as Apache does: say that nothing more will be
        sent, then read and drop what the client still sends, until it closes, or until the
        deadline's grace period ends (deadlines.GRACE_SECONDS: then Deadlines cuts it).
        Not under TLS, whose close is the TLS layer's business.
        """
        if isinstance(self.connection, ssl.SSLSocket):
            return
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        while self.connection.recv(4096):
            pass

    def linger_after_alert(self) -> None:
        """After a failed TLS handshake, let the client read the TLS alert that says why.

        Under TLS 1.3, a client sends its call as soon as its own part of the handshake is
        done, before the server has checked its certificate (mutual TLS, --client-ca). The
        server then refuses it with an alert (certificate required, unknown CA) and closes
        the connection with the call unread; its kernel answers that with a reset, which
        often reaches the client before it reads the alert, and the client is left with a
        connection cut short instead of the reason. So, as linger() does for a 408, at the
        TCP socket (the TLS layer is dead): say that nothing more will be sent, then drop
        what the client still sends until it closes, for GRACE_SECONDS at most.
        """
        try:
            raw = eventlet.green.socket.fromfd(self.deadline.fileno, self.connection.family,
                                               socket.SOCK_STREAM)  # a dup of the descriptor
        except OSError:
            return  # closed already
        with raw, eventlet.Timeout(hosting.GRACE_SECONDS, False):
            try:
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(4096):
                    pass
            except OSError:
                pass  # the client is gone as well

    def cut(self) -> None:
        """Shut the connection down under its green thread, which then fails and closes it.

        Under TLS, at the TCP socket: ssl.SSLSocket.shutdown() would drop its TLS state while
        the green thread is still using it.
        """
        try:
            with socket.fromfd(self.deadline.fileno, self.connection.family,
                               socket.SOCK_STREAM) as raw:  # a dup of the descriptor
                raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already

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
            if error.startswith(f"{AnswerTimeout.__module__}.{AnswerTimeout.__name__}:"):
                pass  # logged already, with the client's address (ClientDeadline)
            elif error.startswith(("BrokenPipeError", "ConnectionResetError")):
                log.info("a connection closed before its answer was sent (%s)", error)
            else:  # not the client: a bug, here or in eventlet
                log.error("eventlet.wsgi: %s", message.rstrip())
        elif self.access and not _EVENTLET_START_STOP.match(message):
            self.access.info(message, *args)

    def error(self, message: str, *args) -> None:  # a client's broken chunked body, say
        log.info(message, *args)

    def debug(self, message: str, *args) -> None:
        pass

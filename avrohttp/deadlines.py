"""Deadlines for slow clients, without a timer per read or write: one deadline per
connection, rewritten as the connection changes phase, and a sweep on eventlet's hub that
enforces them. avrohttp.eventlet_protocol's HTTPProtocol keeps one ClientDeadline per
connection.
"""

import socket
import time
from typing import TYPE_CHECKING, Optional

import eventlet

from avrohttp.answers import RequestTimeout
from avrohttp.hosting import GRACE_SECONDS, sweep_seconds
from avrohttp.options import ServerOptions

if TYPE_CHECKING:
    from avrohttp.eventlet_protocol import HTTPProtocol


class AnswerTimeout(socket.timeout):
    """The client did not read its answer within the socket timeout."""




class Deadlines:
    """Every connection's deadline for its client, and the sweep on the hub that enforces
    them: no timer per read or write.

    eventlet's socket timeouts arm a hub timer (a heap push, then a cancel) for each read and
    write that waits, and an eventlet.Timeout per request is one more. Here each connection
    keeps one number instead, the time by which its client must have done its part
    (ClientDeadline); it is rewritten when the connection changes phase, at the cost of a
    clock read. Every sweep_seconds, a timer on the hub throws the phase's timeout into each
    connection past its deadline that waits on its client.

    So a deadline fires up to sweep_seconds late (a quarter of the shortest timeout, at most
    1 s), and later still if the hub is kept busy. That is fine: the timeouts are there to
    take back a connection and a green thread from a client that holds them, not to time
    anything; 20 s or 21 s of --request-timeout make no difference to either.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.request_timeout = options.request_timeout
        self.idle_timeout = options.idle_timeout
        self.answer_timeout = options.socket_timeout
        self.sweep_seconds = sweep_seconds(options)
        self.connections: set = set()  # a ClientDeadline for each open connection
        self.hub = eventlet.hubs.get_hub()
        self.timer = None

    def start(self) -> None:
        self.timer = self.hub.schedule_call_global(self.sweep_seconds, self.sweep)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def sweep(self) -> None:
        # This runs on the hub, between green threads, as eventlet's own timeouts do.
        now = time.monotonic()
        try:
            for deadline in [d for d in self.connections if d.at is not None and d.at <= now]:
                deadline.expire(now)
        finally:
            self.timer = self.hub.schedule_call_global(self.sweep_seconds, self.sweep)

    def waiting_on(self, fileno: int) -> Optional["eventlet.hubs.hub.FdListener"]:
        """The hub's listener for a green thread waiting to read or write this socket."""
        listeners = self.hub.listeners
        return listeners[self.hub.READ].get(fileno) or listeners[self.hub.WRITE].get(fileno)


class ClientDeadline:
    """One connection's deadline: the monotonic time by which its client must have done its
    part (None while the application works), and what happens then.

    The application cancels it (environ[DEADLINE].cancel()) once it has the request's body:
    from then on, the time is the server's own, and a slow handler (calling a backend, say)
    is not cut short. serve() starts the answer's deadline when the application returns.
    """

    __slots__ = ("at", "phase", "started", "deadlines", "protocol", "fileno")

    FIRST, REQUEST, IDLE, ANSWER, TOLD = "first", "request", "idle", "answer", "told"

    def __init__(self, deadlines: Deadlines, protocol: "HTTPProtocol",
                 connection: socket.socket) -> None:
        self.deadlines = deadlines
        self.protocol = protocol
        self.fileno = connection.fileno()
        # A new connection: its first byte (after the TLS handshake) must come within the idle
        # timeout, and its first request within the request timeout, both from now.
        self.started = time.monotonic()
        self.at: Optional[float] = self.started + min(deadlines.idle_timeout,
                                                      deadlines.request_timeout)
        self.phase = self.FIRST

    def request(self, since: Optional[float] = None) -> None:
        """The request (line, headers, body) must arrive within the request timeout of its
        first byte (or of the connection's start)."""
        self.at = (since or time.monotonic()) + self.deadlines.request_timeout
        self.phase = self.REQUEST

    def idle(self) -> None:
        """A keep-alive connection may wait for its next request for the idle timeout."""
        self.at = time.monotonic() + self.deadlines.idle_timeout
        self.phase = self.IDLE

    def cancel(self) -> None:
        """The request is in: the rest is the server's time."""
        self.at = None

    def answer(self) -> None:
        """The client must take its whole answer within the socket timeout."""
        self.at = time.monotonic() + self.deadlines.answer_timeout
        self.phase = self.ANSWER

    def expire(self, now: float) -> None:
        if self.phase == self.TOLD:  # told, and still there: cut it off at the socket
            self.at = None
            self.protocol.cut()
            return
        deadlines = self.deadlines
        waiting = deadlines.waiting_on(self.fileno)
        if waiting is None:
            return  # the application's own work, not the client's: see again next sweep
        error: socket.timeout
        if self.phase == self.REQUEST or (
                self.phase == self.FIRST and deadlines.request_timeout <= deadlines.idle_timeout):
            error = RequestTimeout(
                f"the request did not arrive within {deadlines.request_timeout:g} s")
        elif self.phase in (self.IDLE, self.FIRST):
            error = socket.timeout("idle")  # HTTPProtocol closes the connection, silently
        else:
            error = AnswerTimeout(
                f"the answer was not read within {deadlines.answer_timeout:g} s")
            self.protocol.log_error("%s", error)  # eventlet's own report of it is dropped
        self.at = now + GRACE_SECONDS
        self.phase = self.TOLD
        waiting.tb(error)  # throw it into the green thread, where it waits on the socket

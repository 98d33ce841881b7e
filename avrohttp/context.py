"""The call a handler is answering, and its deadline: current_call() and time_left().

A handler asks for its call when it needs it:

    def handle_echo(self, query):
        call = avrohttp.current_call()
        user = call.request_meta.get("user", b"").decode()
        call.response_meta["served-by"] = b"replica-1"
        if call.time_left() is not None and call.time_left() < 0.1:
            raise avrohttp.RemoteSystemError("not enough time left to look it up")

The answer is an avrohttp.Call (the object hooks see; avrohttp.hooks): the message, the call
metadata both ways, the HTTP headers, the peer's address and TLS certificate, and the
deadline. It is kept in a context variable, so it is the right one in each green thread
(eventlet), task (asyncio) or thread, and it is made only when asked for: a service that
never asks pays for one small list per call.

Deadlines travel in the call metadata, under TIMEOUT_KEY: the milliseconds that the caller
will wait for the answer, counted from when it sent the call, as ASCII digits (b"2500").
It is relative, like gRPC's `grpc-timeout` header, so that the two clocks need not agree;
time spent in transit is not counted. avrohttp.Client sends its timeout there with every
call, and a Client call made inside a handler sends, and waits for, the smaller of its own
timeout and the time its caller has left (time_left()). docs/your-protocol.md, "Deadlines",
says what the server does with it.
"""

import contextvars
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from avrohttp.hooks import Call

# The call metadata key of a call's timeout, and the most a value may hold (a day: longer
# is taken as no deadline at all, as a socket refuses timeouts of 1e300 s).
TIMEOUT_KEY = "timeout-ms"
MAX_TIMEOUT_MS = 86_400_000

class Holder:
    """What the context variable holds: `slot`, the call being answered in this context (a
    list: the Call once made, or given by the hooks, then what makes one), or None.

    A context variable costs a copy of the context's mapping on each set(), and as much again
    on each reset(): 0.3 µs a call, measured in the responder. So each context (a thread, a
    green thread, the event loop's callbacks) gets one Holder, set once, and a call only
    changes its slot; only an async handler, whose task awaits among others, gets a Holder
    of its own (avrohttp.async_handlers).
    """

    __slots__ = ("slot",)

    def __init__(self, slot: Optional[list] = None) -> None:
        self.slot = slot


_current: contextvars.ContextVar = contextvars.ContextVar("avrohttp_call", default=None)
# A slot's fields: the Call once made (or given by the hooks), then what makes one.
CALL, MESSAGE, META, ORIGIN, DEADLINE = range(5)


def holder() -> Holder:
    """This context's Holder, made and set on first use."""
    found = _current.get()
    if found is None:
        found = Holder()
        _current.set(found)
    return found


def current_call() -> Optional["Call"]:
    """The avrohttp.Call of the call that the running handler answers (or that a hook's
    before() sees), or None outside one."""
    found = _current.get()
    slot = found.slot if found is not None else None
    if slot is None:
        return None
    call = slot[CALL]
    if call is None:
        from avrohttp.hooks import Call
        call = slot[CALL] = Call(slot[MESSAGE])
        call.request_meta = dict(slot[META])  # its own: the handler may change it
        call.origin = slot[ORIGIN]
        call.deadline = slot[DEADLINE]
    return call


def time_left() -> Optional[float]:
    """Seconds until the deadline of the call being answered (0 or less once it has passed),
    or None outside a handler, or for a call without a deadline."""
    found = _current.get()
    slot = found.slot if found is not None else None
    if slot is None or slot[DEADLINE] is None:
        return None
    return slot[DEADLINE] - time.monotonic()


def timeout_of(meta: dict) -> Optional[float]:
    """The seconds that the caller gave the call, from the call metadata; None if it sent no
    timeout, or one that is not a whole number of milliseconds up to a day."""
    value = meta.get(TIMEOUT_KEY)
    if value is None or not value.isdigit() or len(value) > 9:
        return None
    milliseconds = int(value)
    if milliseconds > MAX_TIMEOUT_MS:
        return None
    return milliseconds / 1000


def timeout_value(seconds: float) -> bytes:
    """The TIMEOUT_KEY value for this many seconds: whole milliseconds, rounded down, at
    least 0."""
    return b"%d" % max(0, min(int(seconds * 1000), MAX_TIMEOUT_MS))

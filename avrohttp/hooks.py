"""Call hooks: code that runs around every call, on the server (Responder) and on the client
(Requestor, and so Client), for any protocol.

A hook is an object with two methods, before(call) and after(call), both given the same
Call; CallHook does nothing in either, so a subclass overrides only what it needs. This is
Java avro-ipc's RPCPlugin, cut down to what a Python service uses: avrohttp.metrics is one
hook, and this one passes a trace id from the client to the server and back:

    class TraceIds(avrohttp.CallHook):
        def before(self, call):
            trace_id = call.request_meta.get("trace-id", b"")
            call.response_meta["trace-id"] = trace_id  # the server sends it back

    responder = EchoResponder(hooks=[TraceIds()])

docs/metrics.md describes each field and when each method runs.
"""

import logging
import time
from typing import Dict, Iterable, Optional, Set, Tuple

import avro.errors

from avrohttp import errors, origins

log = logging.getLogger("avrohttp")
_now = time.perf_counter  # a global, not time's attribute: one lookup less, twice a call

# The outcome of a call, as Call.outcome; these are also the values of the `outcome` label of
# avrohttp.metrics.
ANSWERED = "answered"  # the handler's answer went back
DECLARED_ERROR = "declared_error"  # the handler raised one of the message's declared errors
SYSTEM_ERROR = "system_error"  # an Avro system error: a handler's bug, bad parameters...
UNKNOWN_MESSAGE = "unknown_message"  # a message name that this server does not have
# The caller's deadline had passed before the handler could start (avrohttp.context).
DEADLINE_EXCEEDED = "deadline_exceeded"
BAD_REQUEST = "bad_request"  # not an Avro call at all: HTTP 400, no Avro answer
PING = "ping"  # the empty message name: the handshake alone is the answer
# The server did not know the client's protocol and asked for it (handshake NONE): the
# client sends the call again, with its protocol, and that call gets an outcome of its own.
HANDSHAKE = "handshake"
# Client side only: no Avro answer came (the server could not be reached, answered with an
# HTTP error, or the connection broke).
FAILED = "failed"

SERVER_OUTCOMES = (ANSWERED, DECLARED_ERROR, SYSTEM_ERROR, UNKNOWN_MESSAGE, DEADLINE_EXCEEDED,
                   BAD_REQUEST, PING, HANDSHAKE)
CLIENT_OUTCOMES = (ANSWERED, DECLARED_ERROR, SYSTEM_ERROR, FAILED)


class Call:
    """One call, as a hook sees it.

    message: the message name as the client sent it ("" for a ping); None if the request was
        not read that far (a bad request, a handshake NONE).
    outcome: one of SERVER_OUTCOMES or CLIENT_OUTCOMES; None in before().
    seconds: how long the call took, set before after(): on the server, from the moment the
        body is read to the moment the answer is ready; on the client, the whole round trip.
    request_meta, response_meta: the Avro metadata maps (str to bytes) of the call request
        and of the call response. On the server, request_meta is what the client sent, and a
        hook may add to response_meta, which is sent with the answer (a ping, a bad request
        and a handshake NONE have no call response to carry it). On the client it is the
        other way round: before() may add to request_meta, and response_meta is what came back.
    request_bytes, response_bytes: the sizes of the Avro messages (handshake included, framing
        not), 0 if there was none.

    On the server, it is also the call's context, which a handler gets from
    avrohttp.current_call():
    deadline: the time.monotonic() by which the caller wants its answer, from the timeout it
        sent (avrohttp.context.TIMEOUT_KEY), or None; time_left() counts down to it.
    headers: the HTTP request's headers, names in lower case.
    peer: the client's (address, port).
    peer_certificate: the client's TLS certificate, as ssl.SSLSocket.getpeercert() gives it,
        when the server requires one (--client-ca); otherwise None.
    The last three are read from the request when first asked for (origin is what they are
    read from: a WSGI environ, an ASGI scope, or the asyncio host's connection).
    """

    __slots__ = ("message", "outcome", "seconds", "request_meta", "response_meta",
                 "request_bytes", "response_bytes", "deadline", "origin", "_before_done",
                 "_started", "__weakref__")  # a hook may keep its own state per call, weakly

    def __init__(self, message: Optional[str] = None, request_bytes: int = 0) -> None:
        self.message = message
        self.outcome: Optional[str] = None
        self.seconds = 0.0
        self.request_meta: Dict[str, bytes] = {}
        self.response_meta: Dict[str, bytes] = {}
        self.request_bytes = request_bytes
        self.response_bytes = 0
        self.deadline: Optional[float] = None
        self.origin: object = None
        self._before_done = False
        self._started = _now()

    def time_left(self) -> Optional[float]:
        """Seconds until the deadline (0 or less once it has passed), or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def headers(self) -> Dict[str, str]:
        return origins.headers(self.origin)

    @property
    def peer(self) -> Optional[Tuple[str, int]]:
        return origins.peer(self.origin)

    @property
    def peer_certificate(self) -> Optional[dict]:
        return origins.peer_certificate(self.origin)

    def __repr__(self) -> str:
        return (f"Call(message={self.message!r}, outcome={self.outcome!r}, "
                f"seconds={self.seconds:.6f})")


def client_outcome(error: BaseException) -> str:
    """The outcome of a client's call that raised `error`: an Avro error is an answer."""
    if isinstance(error, errors.DeclaredError):
        return DECLARED_ERROR
    if isinstance(error, avro.errors.AvroRemoteException):  # RemoteSystemError
        return SYSTEM_ERROR
    return FAILED


class CallHook:
    """Runs around each call. Override either method; an exception in one is logged (once
    per hook and method, then counted quietly) and the call goes on as if the hook had
    returned, except for the refusal below.

    before(call): on the server, once the message name and the metadata are read, just
    before the handler runs; for a call that ends sooner (a ping, an unknown message, a bad
    request), just before after(). On the client, before the request is written.
    To refuse a call, before() raises the Avro error that the caller is to get, as a handler
    would: avrohttp.DeclaredError(name, datum) for an error the message declares, or
    avrohttp.RemoteSystemError("words") for a system error. On the server, the handler does
    not run and the caller gets that error; on the client, the call raises it and nothing is
    sent. The other hooks' before() still run (each hook's after() always follows its
    before()), and the first refusal wins.
    after(call): when the call is over, with call.outcome and call.seconds set. On the
    server, response_meta written here is still sent.
    Each runs exactly once per call, before() first.
    """

    def before(self, call: Call) -> None:
        pass

    def after(self, call: Call) -> None:
        pass


class Hooks:
    """The hooks of one responder or requestor, run in order, each failure contained."""

    def __init__(self, hooks: Iterable[CallHook] = ()) -> None:
        self.hooks = list(hooks)
        self.failures = 0  # hook calls that raised, for a test or a debugger to see
        self._logged: Set[Tuple[int, str]] = set()  # (id(hook), method) of failures logged

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def append(self, hook: CallHook) -> None:
        self.hooks.append(hook)

    def before(self, call: Call) -> None:
        """Run each hook's before(); then raise the first refusal, if a hook refused."""
        if call._before_done:
            return
        call._before_done = True
        refusal = None
        for hook in self.hooks:
            try:
                hook.before(call)
            except avro.errors.AvroRemoteException as error:  # a refusal (see CallHook)
                if refusal is None:
                    refusal = error
            except Exception:
                self._failed(hook, "before")
        if refusal is not None:
            raise refusal

    def after(self, call: Call) -> None:
        if not call._before_done:  # a call that ended before its handler: before() runs now
            outcome, call.outcome = call.outcome, None  # as before() always sees it
            try:
                self.before(call)
            except avro.errors.AvroRemoteException:
                pass  # the call is over already: there is nothing left to refuse
            call.outcome = outcome
        call.seconds = _now() - call._started
        for hook in self.hooks:
            try:
                hook.after(call)
            except Exception:
                self._failed(hook, "after")

    def _failed(self, hook: CallHook, method: str) -> None:
        # Logged with its traceback once: a hook that fails on every call must not write a
        # traceback per call into the log, nor break the calls.
        self.failures += 1
        key = (id(hook), method)
        if key not in self._logged:
            self._logged.add(key)
            log.exception("call hook %s.%s failed (logged once; the call goes on)",
                          type(hook).__name__, method)

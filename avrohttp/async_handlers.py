"""async def handlers: what respond() returns for a call to one (PendingAnswer), and the
check that a host without an event loop makes at start-up (refuse_async_handlers).

avrohttp.responder.Responder.respond stays one synchronous implementation for every host;
only a call to an `async def` handler leaves its last step to a host that has an event loop.
"""

import inspect
import time
import types
from typing import TYPE_CHECKING, Callable, Optional

import avro.ipc
import avro.protocol

from avrohttp import codec, hooks
from avrohttp.context import CALL, DEADLINE, Holder, _current
from avrohttp.hooks import Call

if TYPE_CHECKING:
    from avrohttp.responder import Responder


class PendingAnswer:
    """What respond() returns for a call whose handler is an `async def`: the answer, once
    awaited (`await pending.answer()`), as the bytes respond() returns for any other call.

    respond() stays one synchronous implementation for every host; only a call to an async
    handler leaves its last step, awaiting the handler and writing its answer or its error,
    to a host that has an event loop (avrohttp.asgi). The eventlet host refuses async
    handlers at start-up (refuse_async_handlers), so it never sees one of these.

    The handler runs with its call's context (avrohttp.current_call()), and is cancelled at
    its caller's deadline, if the caller gave one: the caller gets a system error that says
    so, and the call's outcome is deadline_exceeded.
    """

    __slots__ = ("responder", "message", "coroutine", "call", "slot", "prefix", "then")

    def __init__(self, responder: "Responder", message: avro.protocol.Message,
                 coroutine: types.CoroutineType, call: Optional[Call], slot: list) -> None:
        self.responder = responder
        self.message = message
        self.coroutine = coroutine
        self.call = call
        self.slot = slot  # the call's context (avrohttp.context)
        self.prefix = b""  # the handshake response, put in front as respond() returns
        self.then: Optional[Callable[[bytes], bytes]] = None  # the hooks' after(), if any

    def __radd__(self, prefix: bytes) -> "PendingAnswer":
        # respond() writes `handshake_response + self._call(...)`: the same line serves both
        # kinds of answer, and this one keeps the handshake for when it is answered.
        self.prefix = prefix + self.prefix
        return self

    async def answer(self) -> bytes:
        import asyncio  # here: a program that has no event loop never comes here
        responder, slot, name = self.responder, self.slot, self.message.name
        token = _current.set(Holder(slot))  # this task's own: others await beside it
        deadline = slot[DEADLINE]
        timeout = None
        try:
            if deadline is None:
                result = await self.coroutine
            else:
                loop_deadline = asyncio.get_running_loop().time() + deadline - time.monotonic()
                async with asyncio.timeout_at(loop_deadline) as timeout:
                    result = await self.coroutine
            body = responder._call_result(responder._response_encoders[name][0], result,
                                          is_error=False)
        except TimeoutError as e:
            if timeout is None or not timeout.expired():  # the handler's own
                body = responder._failed(self.message, e, self.call)
            else:
                if self.call is not None:
                    self.call.outcome = hooks.DEADLINE_EXCEEDED
                body = responder._system_error(
                    f"Deadline exceeded: {name} was stopped at its caller's deadline")
        except Exception as e:
            body = responder._failed(self.message, e, self.call)
        except BaseException:  # cancelled (the client left, the server stops): no answer,
            if self.then is not None:  # but the hooks see the call end, as a system error
                if self.call is not None:
                    self.call.outcome = hooks.SYSTEM_ERROR
                self.then(self.prefix + responder._system_error(f"{name} was cancelled"))
            raise
        finally:
            _current.reset(token)
        made = slot[CALL]  # a context the handler asked for, without hooks
        if self.call is None and made is not None and made.response_meta:
            body = codec.with_metadata(body, made.response_meta)
        response = self.prefix + body
        return response if self.then is None else self.then(response)


class AsyncHandlers(TypeError):
    """A responder with async def handlers, given to a host without an event loop."""


def refuse_async_handlers(responder: avro.ipc.Responder) -> None:
    """Raise AsyncHandlers if the responder has `async def` handlers (or invoke): a host
    without an event loop (WSGI, eventlet) could not await them. Hosts call this at
    start-up, so that the mistake shows then, not at the first call."""
    if inspect.iscoroutinefunction(responder.invoke):
        handlers = ["invoke"]
    else:
        handlers = sorted(name for name in dir(type(responder)) if name.startswith("handle_")
                          and inspect.iscoroutinefunction(getattr(responder, name)))
    if handlers:
        raise AsyncHandlers(
            f"{type(responder).__name__} has async def handlers ({', '.join(handlers)}), which "
            "need an event loop: serve it on the asyncio host (--loop asyncio), or make them "
            "plain functions")



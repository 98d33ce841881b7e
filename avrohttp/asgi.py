"""The ASGI application that answers Avro calls over HTTP, for any responder: the asyncio
twin of avrohttp.wsgi.

What each request gets is avrohttp.answers' business, the same on every host; this module
only reads the request from ASGI's receive() and writes the answer with send(). Handlers may
be `async def` here: their answer is awaited (avrohttp.async_handlers.PendingAnswer). A plain
handler runs on the event loop, as it is; docs/asyncio.md says when that is fine. Any ASGI
server can host it; avrohttp.serve_asyncio serves it on uvicorn's HTTP with every protection.
"""

from typing import TYPE_CHECKING, Awaitable, Callable, Optional

import avro.ipc

from avrohttp import codec
from avrohttp.answers import Answer, Rules
from avrohttp.async_handlers import PendingAnswer
from avrohttp.options import MAX_BODY_BYTES
from avrohttp.origins import CONNECTION_KEY

if TYPE_CHECKING:  # imported only for the type: avrohttp.metrics needs prometheus_client
    from avrohttp.metrics import ServerMetrics

# Where avrohttp.serve_asyncio puts the connection's request deadline in the ASGI scope:
# an object whose `expired` is the error to answer with (a RequestTimeout) once the body has
# come too slowly, and None until then.
DEADLINE = CONNECTION_KEY

_AVRO_HEADERS = [(b"content-type", b"avro/binary")]


def make_asgi_application(responder: avro.ipc.Responder, max_body_bytes: int = MAX_BODY_BYTES,
                          metrics: Optional["ServerMetrics"] = None) -> Callable:
    """Return an ASGI application that answers Avro calls POSTed to any path but /health
    (and /metrics, with metrics): see avrohttp.answers.Rules."""
    return application_of(Rules(responder, max_body_bytes, metrics))


def application_of(rules: Rules) -> Callable:
    """The ASGI application of these Rules (make_asgi_application)."""
    before_body, call, max_body_bytes = rules.before_body, rules.call, rules.max_body_bytes

    async def application(scope: dict, receive: Callable[[], Awaitable[dict]],
                          send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":  # "lifespan": nothing to start or stop
            return
        content_type = content_length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")
        client = scope.get("client") or ("-", "-")
        answer = before_body(scope["method"], scope["path"], content_type, content_length,
                             client)
        if answer is None:
            body = b""
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client hung up: no one to answer
                body += message.get("body", b"")
                if len(body) > max_body_bytes:  # a chunked body, over the limit
                    answer = rules.too_large(client)
                    break
                if not message.get("more_body"):
                    break
                deadline = scope.get(DEADLINE)
                if deadline is not None and deadline.expired is not None:
                    answer = rules.too_slow(client, deadline.expired)
                    break
            if answer is None:
                result = call(body, client, scope)
                if not isinstance(result, Answer):
                    if isinstance(result, PendingAnswer):  # an async handler's
                        result = await result.answer()
                    payload = codec.frame(result)
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [*_AVRO_HEADERS,
                                            (b"content-length", b"%d" % len(payload))]})
                    await send({"type": "http.response.body", "body": payload})
                    return
                answer = result
        await send({"type": "http.response.start", "status": int(answer.status[:3]),
                    "headers": [(name.lower().encode(), value.encode())
                                for name, value in answer.headers]})
        await send({"type": "http.response.body", "body": answer.body})

    return application

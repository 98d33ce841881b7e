"""The WSGI application that answers Avro calls over HTTP, for any responder.

What each request gets is avrohttp.answers' business (the same on every host); this module
only reads the request from the WSGI environ and writes the answer. It needs no eventlet:
any WSGI server can host it. An async def handler needs an event loop: serve such a
responder with avrohttp.asgi instead.
"""

from typing import TYPE_CHECKING, Callable, Iterable, Optional, cast

import avro.ipc

from avrohttp import codec
from avrohttp.answers import Answer, BodyTooLarge, RequestTimeout, Rules
from avrohttp.options import MAX_BODY_BYTES
from avrohttp.origins import CONNECTION_KEY
from avrohttp.async_handlers import refuse_async_handlers

# Where avrohttp.serve puts the request's deadline in the WSGI environ: the application
# cancels it once it has the whole body, since the rest is the server's own time.
DEADLINE = CONNECTION_KEY
_CLOSE = ("Connection", "close")

if TYPE_CHECKING:  # imported only for the type: avrohttp.metrics needs prometheus_client
    from avrohttp.metrics import ServerMetrics


def make_application(responder: avro.ipc.Responder, max_body_bytes: int = MAX_BODY_BYTES,
                     metrics: Optional["ServerMetrics"] = None) -> Callable:
    """Return a WSGI application that answers Avro calls POSTed to any path but /health (and
    /metrics, with metrics).

    metrics: an avrohttp.metrics.ServerMetrics that the caller has made a hook of the
    responder, as the hosts' Server does (see avrohttp.answers.Rules).
    Raises avrohttp.async_handlers.AsyncHandlers if the responder has async def handlers, which
    WSGI cannot await.
    """
    refuse_async_handlers(responder)
    return application_of(Rules(responder, max_body_bytes, metrics))


def application_of(rules: Rules) -> Callable:
    """The WSGI application of these Rules (make_application), whose responder has no async
    def handlers."""
    before_body, call, max_body_bytes = rules.before_body, rules.call, rules.max_body_bytes

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        client = (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"))
        length = environ.get("CONTENT_LENGTH")
        answer = before_body(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                             environ.get("CONTENT_TYPE"), length, client)
        if answer is None:
            try:
                body = _read_body(environ["wsgi.input"], length, max_body_bytes)
            except BodyTooLarge:
                answer = rules.too_large(client)
            except RequestTimeout as e:
                answer = rules.too_slow(client, e)
            except (OSError, ValueError) as e:  # the client stalled, hung up, or broke chunking
                answer = rules.unreadable(client, e)
            else:
                deadline = environ.get(DEADLINE)
                if deadline is not None:
                    deadline.cancel()  # the request is in: the rest is the server's time
                result = call(body, client, environ)
                if not isinstance(result, Answer):
                    # bytes: never a PendingAnswer, as refuse_async_handlers saw to above
                    payload = codec.frame(cast(bytes, result))
                    start_response("200 OK", [("Content-Type", "avro/binary"),
                                              ("Content-Length", str(len(payload)))])
                    return [payload]
                answer = result
        headers = list(answer.headers)
        if _CLOSE in headers:  # Rules' 413, say: the rest of the body is not wanted
            # Connection is a hop-by-hop header, which PEP 3333 leaves to the server (wsgiref
            # refuses it): so it is taken out, and the eventlet host (whose deadline is in the
            # environ) is asked to close the connection after this answer.
            headers.remove(_CLOSE)
            deadline = environ.get(DEADLINE)
            if deadline is not None:
                deadline.protocol.close_after_answer()
        start_response(answer.status, headers)
        return [answer.body]

    return application


def _read_body(stream, length: Optional[str], limit: int) -> bytes:
    if length:
        return stream.read(int(length))  # not over the limit: Rules.before_body saw to that
    body = stream.read(limit + 1)  # chunked: the server decodes it; stop one past the limit
    if len(body) > limit:
        raise BodyTooLarge()
    return body

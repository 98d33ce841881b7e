"""The WSGI application that answers Avro calls over HTTP, for any responder.

It follows the Avro specification's HTTP rules (POST, avro/binary, framed bodies) and adds
what a service on the internet needs: a body limit, a clear 4xx for each bad request,
GET /health for balancers, and GET /metrics for Prometheus (with avrohttp.metrics). It needs
no eventlet: any WSGI server can host it.
"""

import logging
import socket
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import avro.ipc

from avrohttp import codec
from avrohttp.responder import BadRequest, limit_zero_byte_items

# The largest request body taken, in bytes; a larger one gets 413 unread.
MAX_BODY_BYTES = 1024 * 1024
# Where avrohttp.serve puts the request's deadline in the WSGI environ: the application
# cancels it once it has the whole body, since the rest is the server's own time.
DEADLINE = "avrohttp.request_deadline"

if TYPE_CHECKING:  # imported only for the type: avrohttp.metrics needs prometheus_client
    from avrohttp.metrics import ServerMetrics

log = logging.getLogger("avrohttp")


class RequestTimeout(socket.timeout):
    """The request did not arrive within the request timeout (--request-timeout) of its
    first byte."""


class BodyTooLarge(Exception):
    """The body is over the limit: HTTP 413."""


def make_application(responder: avro.ipc.Responder, max_body_bytes: int = MAX_BODY_BYTES,
                     metrics: Optional["ServerMetrics"] = None) -> Callable:
    """Return a WSGI application that answers Avro calls POSTed to any path but /health (and
    /metrics, with metrics).

    metrics: an avrohttp.metrics.ServerMetrics that the caller has made a hook of the
    responder (responder.hooks.append(metrics), as avrohttp.cli does): GET /metrics then
    serves it, and every answer that is not an Avro answer is counted by status.
    This is the server's start-up, so it also lowers avro.io's process-wide cap on
    zero-byte items (see avrohttp.responder.limit_zero_byte_items).
    """
    limit_zero_byte_items()
    paths = ("/health", "/metrics") if metrics is not None else ("/health",)

    # The answers that are not Avro answers, counted by status when there are metrics (the
    # Avro answers are counted by the responder's hook).
    def plain(start_response: Callable, status: str, reason: str,
              headers: Iterable = ()) -> list:
        if metrics is not None:
            metrics.count_status(int(status[:3]))
        return _plain(start_response, status, reason, headers)

    def refuse(environ: dict, start_response: Callable, status: str, reason: str,
               headers: Iterable = ()) -> list:
        """Answer a request that is not a call with a 4xx and its reason, and log it once."""
        _log_client(environ, f"{status}: {reason}")
        return plain(start_response, status, reason, headers)

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        # /health is for load balancers and orchestrators, and only that: a GET (or HEAD)
        # gets 200 from any process that can still answer; /metrics is for Prometheus.
        # Avro calls go to any other path.
        path = environ.get("PATH_INFO")
        if path in paths:
            if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
                return refuse(environ, start_response, "405 Method Not Allowed",
                              f"{path} answers GET; Avro calls go to any other path",
                              [("Allow", "GET, HEAD")])
            if path == "/health":
                return plain(start_response, "200 OK", "OK")
            content_type, text = metrics.exposition()
            metrics.count_status(200)
            start_response("200 OK", [("Content-Type", content_type),
                                      ("Content-Length", str(len(text)))])
            return [text]
        if environ["REQUEST_METHOD"] != "POST":
            return refuse(environ, start_response, "405 Method Not Allowed",
                          "Avro calls must be POSTed", [("Allow", "POST")])
        content_type = environ.get("CONTENT_TYPE", "avro/binary")
        if (content_type != "avro/binary"  # checked first: what every Avro client sends
                and content_type and content_type.split(";")[0].strip().lower() != "avro/binary"):
            return refuse(environ, start_response, "415 Unsupported Media Type",
                          "Content-Type must be avro/binary")
        try:
            body = _read_body(environ, max_body_bytes)
        except BodyTooLarge:
            # The rest of the body is not wanted: ask the client to close the connection.
            return refuse(environ, start_response, "413 Content Too Large",
                          f"Body is larger than {max_body_bytes} bytes", [("Connection", "close")])
        except RequestTimeout as e:
            _log_client(environ, e)
            return plain(start_response, "408 Request Timeout", "The body came too slowly",
                         [("Connection", "close")])
        except (OSError, ValueError) as e:  # the client stalled, hung up, or broke the chunking
            _log_client(environ, f"the body could not be read: {e}")
            return plain(start_response, "400 Bad Request", "Body could not be read",
                         [("Connection", "close")])
        if environ.get(DEADLINE):
            environ[DEADLINE].cancel()  # the request is in: the rest is the server's time
        try:
            call_response = responder.respond(codec.unframe(body))
        except (codec.BadFraming, BadRequest) as e:
            if isinstance(e, codec.BadFraming) and hasattr(responder, "bad_request"):
                responder.bad_request(len(body))  # for its hooks: respond() never saw it
            return refuse(environ, start_response, "400 Bad Request", f"Bad Avro request: {e}")
        except Exception:  # a bug, not bad input: log it here, where eventlet would not
            log.exception("unexpected error while answering a call")
            return plain(start_response, "500 Internal Server Error", "Internal server error")
        payload = codec.frame(call_response)
        start_response("200 OK", [("Content-Type", "avro/binary"),
                                  ("Content-Length", str(len(payload)))])
        return [payload]

    return application


def _read_body(environ: dict, limit: int) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        if int(length) > limit:  # refuse before reading a byte of it
            raise BodyTooLarge()
        return stream.read(int(length))
    body = stream.read(limit + 1)  # chunked: the server decodes it; stop one past the limit
    if len(body) > limit:
        raise BodyTooLarge()
    return body


def _log_client(environ: dict, problem: object) -> None:
    """One line in the log for a client's failure (not the server's: that is an ERROR)."""
    log.info("client %s:%s: %s", environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"), problem)


def _plain(start_response: Callable, status: str, reason: str,
           headers: Iterable = ()) -> list:
    body = (reason + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]

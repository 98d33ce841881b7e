"""What each HTTP request gets, whichever server hosts the application: the Avro
specification's HTTP rules (POST, avro/binary, framed bodies), the body limit, a clear 4xx
for each bad request (logged once, in one line), GET /health and its two probes
(/health/live, /health/ready), and GET /metrics.

avrohttp.wsgi (for eventlet.wsgi and any WSGI server) and avrohttp.asgi (for uvicorn and any
ASGI server) hold only their own I/O around one Rules object; so both hosts answer every
request alike.
"""

import inspect
import logging
import socket
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Tuple, Union

import avro.ipc

from avrohttp import codec
from avrohttp.options import MAX_BODY_BYTES
from avrohttp.async_handlers import PendingAnswer
from avrohttp.responder import BadRequest, limit_zero_byte_items

if TYPE_CHECKING:  # imported only for the type: avrohttp.metrics needs prometheus_client
    from avrohttp.metrics import ServerMetrics

log = logging.getLogger("avrohttp")

HEALTH_PATH = "/health"
# Kubernetes' two probes: liveness (restart the process if it fails) and readiness (send it
# no calls while it fails). docs/deployment.md says how they are used.
LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"
METRICS_PATH = "/metrics"
AVRO = "avro/binary"


# The client's address, (host, port), or None where the host does not know it (uvicorn's,
# for a client that left as it came).
Client = Optional[tuple]


class Answer(NamedTuple):
    """An answer that is not an Avro answer: its status line, headers (Content-Type and
    Content-Length first) and body."""

    status: str  # "405 Method Not Allowed"
    headers: Tuple[Tuple[str, str], ...]
    body: bytes


class RequestTimeout(socket.timeout):
    """The request did not arrive within the request timeout (--request-timeout) of its
    first byte."""


class BodyTooLarge(Exception):
    """The body is over the limit: HTTP 413."""


class Rules:
    """The HTTP side of a responder: what each request gets, before and after its body.

    metrics: an avrohttp.metrics.ServerMetrics that the caller has made a hook of the
    responder (the hosts' Server does): GET /metrics then serves it, and every answer that is
    not an Avro answer is counted by status.
    shutting_down: set by the server once it is stopping (SIGTERM): GET /health/ready then
    answers 503, so that balancers send it no more calls.
    Making one is the server's start-up, so it also lowers avro.io's process-wide cap on
    zero-byte items (see avrohttp.responder.limit_zero_byte_items).
    """

    def __init__(self, responder: avro.ipc.Responder, max_body_bytes: int = MAX_BODY_BYTES,
                 metrics: Optional["ServerMetrics"] = None) -> None:
        limit_zero_byte_items()
        self.responder = responder
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.paths = (HEALTH_PATH, LIVE_PATH, READY_PATH,
                      *((METRICS_PATH,) if metrics is not None else ()))
        self.shutting_down = False
        # avrohttp.Responder's readiness check; any other avro.ipc.Responder is always ready.
        self.ready_check: Optional[Callable[[], object]] = getattr(responder, "ready", None)
        self.ready_failure: Optional[str] = None  # the check's exception, logged once
        # avro.ipc's own Responder takes the body alone; avrohttp's, its origin too (unless a
        # subclass overrides respond() the avro.ipc way).
        self.gives_origin = "origin" in inspect.signature(responder.respond).parameters

    def before_body(self, method: str, path: str, content_type: Optional[str],
                    content_length: Optional[str], client: Client) -> Optional[Answer]:
        """The answer to a request that is not a call, or None for a call: read its body.

        content_type is None if the request has none (a call without one is accepted);
        content_length is None for a chunked body.
        """
        # /health is for load balancers and orchestrators, and only that: a GET (or HEAD)
        # gets 200 from any process that can still answer, as /health/live does;
        # /health/ready says whether it should get calls; /metrics is for Prometheus.
        # Avro calls go to any other path.
        if path in self.paths:
            if method not in ("GET", "HEAD"):
                return self.refuse(client, "405 Method Not Allowed",
                                   f"{path} answers GET; Avro calls go to any other path",
                                   (("Allow", "GET, HEAD"),))
            if path == HEALTH_PATH or path == LIVE_PATH:
                return self.plain("200 OK", "OK")
            if path == READY_PATH:
                reason = "shutting down" if self.shutting_down else self.not_ready()
                if reason is None:
                    return self.plain("200 OK", "OK")
                return self.plain("503 Service Unavailable", reason)
            assert self.metrics is not None  # METRICS_PATH is in self.paths only with metrics
            content_type, text = self.metrics.exposition()
            self.metrics.count_status(200)
            return Answer("200 OK", (("Content-Type", content_type),
                                     ("Content-Length", str(len(text)))), text)
        if method != "POST":
            return self.refuse(client, "405 Method Not Allowed", "Avro calls must be POSTed",
                               (("Allow", "POST"),))
        if (content_type != AVRO  # checked first: what every Avro client sends
                and content_type and content_type.split(";")[0].strip().lower() != AVRO):
            return self.refuse(client, "415 Unsupported Media Type",
                               "Content-Type must be avro/binary")
        if content_length:
            try:
                too_large = int(content_length) > self.max_body_bytes
            except ValueError as e:
                return self.unreadable(client, e)
            if too_large:
                return self.too_large(client)  # refused before a byte of it is read
        return None

    def not_ready(self) -> Optional[str]:
        """Why the service should get no calls now, in one line, or None: its responder's
        ready(). An exception in it counts as not ready; it is logged once, until the check
        works again."""
        check = self.ready_check
        if check is None:
            return None
        try:
            reason = check()
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
            if failure != self.ready_failure:  # not again at every probe
                self.ready_failure = failure
                log.exception("the readiness check failed")
            return f"the readiness check failed ({type(e).__name__})"
        self.ready_failure = None
        if reason is None:
            return None
        return " ".join(str(reason).split()) or "not ready"

    def too_large(self, client: Client) -> Answer:
        # The rest of the body is not wanted: ask the client to close the connection.
        return self.refuse(client, "413 Content Too Large",
                           f"Body is larger than {self.max_body_bytes} bytes",
                           (("Connection", "close"),))

    def too_slow(self, client: Client, error: Exception) -> Answer:
        log_client(client, error)
        return self.plain("408 Request Timeout", "The body came too slowly",
                          (("Connection", "close"),))

    def unreadable(self, client: Client, error: Exception) -> Answer:
        """The client stalled, hung up, or broke the chunking."""
        log_client(client, f"the body could not be read: {error}")
        return self.plain("400 Bad Request", "Body could not be read", (("Connection", "close"),))

    def call(self, body: bytes, client: Client,
             origin: object = None) -> Union[bytes, PendingAnswer, Answer]:
        """The Avro answer to the body, still to be framed (codec.frame): bytes, or a
        PendingAnswer to await (an async handler's); or, for a body that is no Avro call, an
        Answer. origin: what the call's context reads the request's headers and peer from
        (avrohttp.origins), for an avrohttp.Responder."""
        # avro.ipc's respond() takes the body alone and returns bytes; avrohttp's may return a
        # PendingAnswer.
        respond: Callable[..., Union[bytes, PendingAnswer]] = self.responder.respond
        try:
            if self.gives_origin:
                return respond(codec.unframe(body), None, origin)
            return respond(codec.unframe(body))
        except (codec.BadFraming, BadRequest) as e:
            if isinstance(e, codec.BadFraming) and hasattr(self.responder, "bad_request"):
                self.responder.bad_request(len(body))  # for its hooks: respond() never saw it
            return self.refuse(client, "400 Bad Request", f"Bad Avro request: {e}")
        except Exception:  # a bug, not bad input: log it here, where the server would not
            log.exception("unexpected error while answering a call")
            return self.plain("500 Internal Server Error", "Internal server error")

    def refuse(self, client: Client, status: str, reason: str, headers: tuple = ()) -> Answer:
        """Answer a request that is not a call with a 4xx and its reason, and log it once."""
        log_client(client, f"{status}: {reason}")
        return self.plain(status, reason, headers)

    def plain(self, status: str, reason: str, headers: tuple = ()) -> Answer:
        if self.metrics is not None:
            self.metrics.count_status(int(status[:3]))
        body = (reason + "\n").encode()
        return Answer(status, (("Content-Type", "text/plain; charset=utf-8"),
                               ("Content-Length", str(len(body))), *headers), body)


def log_client(client: Client, problem: object) -> None:
    """One line in the log for a client's failure (not the server's: that is an ERROR)."""
    host, port = client or ("-", "-")
    log.info("client %s:%s: %s", host, port, problem)

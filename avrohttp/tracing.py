"""OpenTelemetry tracing of Avro calls: two call hooks (avrohttp.hooks) that make a span for
each call, as OpenTelemetry's semantic conventions for RPC say, and carry the trace context
from the client to the server in the call's Avro metadata.

    responder = EchoResponder(call_hooks=[ServerTracing(EchoProtocol)])
    client = avrohttp.Client(EchoProtocol, host, port,
                             call_hooks=[ClientTracing(EchoProtocol, host, port)])

It needs opentelemetry-api alone (`pip install 'avrohttp[tracing]'`); the spans go nowhere
until the program sets up OpenTelemetry's SDK and an exporter, and until then the hooks only
pass on the trace context that they are given. docs/tracing.md shows the spans, and how to
turn them on for a server of avrohttp.cli.

The conventions are those of opentelemetry-semantic-conventions 0.66b2 (schema 1.44.0):

- the span's name is its rpc.method, the protocol's full name and the message's,
  `rpc.sample.echo.AvroEcho/echo`; on the server, a message that the protocol lacks is
  rpc.method `_OTHER` (its name as sent in rpc.method_original), in a span named `avro`;
- rpc.system.name is `avro`, a value of our own: the conventions list grpc, dubbo,
  connectrpc and jsonrpc, and say that any other system may use a value of its own;
- the client's span has server.address and server.port, the host and port it calls;
- a call that does not end with an answer has the status ERROR, and error.type is its
  outcome (avrohttp.hooks): declared_error, system_error, failed (client: no Avro answer
  came), unknown_message, deadline_exceeded (server).

The trace context goes in the call request's metadata, under the keys of the propagators
that OpenTelemetry is set up with (opentelemetry.propagate: `traceparent` and `tracestate`,
W3C's, and `baggage` by default), each value as UTF-8 bytes.
"""

import contextvars
from typing import Dict, List, Optional, Tuple, Union

import avro.protocol
try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.propagators.textmap import Getter, Setter
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.util.types import AttributeValue
except ModuleNotFoundError as e:  # one line: which extra to install
    from avrohttp import extras
    raise extras.missing("tracing", e) from None

from avrohttp import hooks
from avrohttp.hooks import Call, CallHook
from avrohttp.protocol import as_written

SYSTEM = "avro"  # rpc.system.name
OTHER_METHOD = "_OTHER"  # rpc.method of a message that the server's protocol lacks
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
_ERROR = Status(StatusCode.ERROR)


class MetaGetter(Getter):
    """Reads a propagator's fields from a call's metadata (str to bytes)."""

    def get(self, carrier: Dict[str, bytes], key: str) -> Optional[List[str]]:
        value = carrier.get(key)
        return None if value is None else [value.decode("utf-8", "replace")]

    def keys(self, carrier: Dict[str, bytes]) -> List[str]:
        return list(carrier)


class MetaSetter(Setter):
    """Writes a propagator's fields into a call's metadata."""

    def set(self, carrier: Dict[str, bytes], key: str, value: str) -> None:
        carrier[key] = value.encode()


META_GETTER = MetaGetter()
META_SETTER = MetaSetter()


class _Tracing(CallHook):
    """What both sides share: the tracer, and each message's span name and attributes, made
    once. The span of each call in flight is kept by the id of its Call, from before() to
    after() (each runs exactly once per call, after() last)."""

    def __init__(self, protocol: Union[str, avro.protocol.Protocol],
                 tracer_provider: Optional[trace.TracerProvider],
                 attributes: Dict[str, AttributeValue]) -> None:
        protocol = as_written(protocol)
        # The global tracer provider, if none is given: until the program sets one up, a
        # proxy that makes no spans, and makes them from then on.
        self.tracer = trace.get_tracer("avrohttp", tracer_provider=tracer_provider,
                                       schema_url=SCHEMA_URL)
        self.attributes: Dict[str, AttributeValue] = {"rpc.system.name": SYSTEM, **attributes}
        service = protocol.fullname
        self.methods: Dict[str, Tuple[str, Dict[str, AttributeValue]]] = {}
        for message in protocol.messages or {}:
            method = f"{service}/{message}"
            self.methods[message] = (method, {**self.attributes, "rpc.method": method})
        self.calls: dict = {}  # by id(call): what each side keeps (see its own calls)

    def method(self, message: str) -> Tuple[str, Dict[str, AttributeValue]]:
        """The span name and attributes of a call of this message."""
        known = self.methods.get(message)
        if known is not None:
            return known
        return SYSTEM, {**self.attributes, "rpc.method": OTHER_METHOD,
                        "rpc.method_original": message}


def _end(span: trace.Span, call: Call) -> None:
    if call.outcome != hooks.ANSWERED:
        span.set_status(_ERROR)
        span.set_attribute("error.type", call.outcome or "_OTHER")
    span.end()


class ServerTracing(_Tracing):
    """A SERVER span for each call that a Responder answers, child of the client's span when
    the call's metadata carries its trace context.

    The span is the current one while the handler runs (a plain one, or an async def one on
    the asyncio host), so that the spans of the calls it makes, with ClientTracing, are its
    children. Pings, and requests that end before their message name is read (a bad request,
    a handshake that asks for the client's protocol, which the client then sends again with
    the same call), get no span.

    protocol: the responder's protocol. tracer_provider: OpenTelemetry's global one, if None.
    """

    # Each call's span, the context that has it as current, and the token to detach it.
    calls: Dict[int, Tuple[trace.Span, context.Context, "contextvars.Token[context.Context]"]]

    def __init__(self, protocol: Union[str, avro.protocol.Protocol],
                 tracer_provider: Optional[trace.TracerProvider] = None) -> None:
        super().__init__(protocol, tracer_provider, {})

    def before(self, call: Call) -> None:
        if not call.message:  # None: not read that far; "": a ping
            return
        name, attributes = self.method(call.message)
        parent = propagate.extract(call.request_meta, getter=META_GETTER)
        span = self.tracer.start_span(name, parent, SpanKind.SERVER, attributes)
        current = trace.set_span_in_context(span, parent)
        self.calls[id(call)] = (span, current, context.attach(current))

    def after(self, call: Call) -> None:
        started = self.calls.pop(id(call), None)
        if started is None:
            return
        span, current, token = started
        # after() runs where before() ran: in the same thread, green thread or asyncio task
        # (an async def handler's after() comes later, in the task that awaits it). Anywhere
        # else the token would not detach, and OpenTelemetry would log that it failed.
        if context.get_current() is current:
            context.detach(token)
        _end(span, call)


class ClientTracing(_Tracing):
    """A CLIENT span for each call of a Client, AsyncClient or Requestor, child of the span
    that is current when the call is made, whose trace context goes to the server in the
    call's metadata.

    protocol, host, port: the client's (server.address and server.port are host and port).
    tracer_provider: OpenTelemetry's global one, if None.
    """

    calls: Dict[int, trace.Span]  # each call's span

    def __init__(self, protocol: Union[str, avro.protocol.Protocol], host: str, port: int,
                 tracer_provider: Optional[trace.TracerProvider] = None) -> None:
        super().__init__(protocol, tracer_provider,
                         {"server.address": host, "server.port": port})

    def before(self, call: Call) -> None:
        assert call.message is not None  # a client's call always has its message's name
        name, attributes = self.method(call.message)
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        propagate.inject(call.request_meta, trace.set_span_in_context(span), META_SETTER)
        self.calls[id(call)] = span

    def after(self, call: Call) -> None:
        span = self.calls.pop(id(call), None)
        if span is not None:
            _end(span, call)

"""server.py's echo service with OpenTelemetry spans, printed to stdout (docs/tracing.md).

Try it: `python -m examples.tracing.server` (it needs `pip install 'avrohttp[tracing]'` and
opentelemetry-sdk), then call it with `python client.py --echo --query Hi`: the server's
span is printed when it is exported, within a few seconds, or when the server stops.
"""

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from avrohttp import cli
from avrohttp.tracing import ServerTracing
from protocol import EchoProtocol
from server import EchoResponder


def traced_responder() -> EchoResponder:
    responder = EchoResponder()
    responder.hooks.append(ServerTracing(EchoProtocol))
    return responder


if __name__ == "__main__":
    import eventlet
    eventlet.monkey_patch()  # the eventlet host only: leave these two lines out for asyncio
    provider = TracerProvider(resource=Resource.create({"service.name": "echo"}))
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    raise SystemExit(cli.main(traced_responder))

"""A server whose calls can end every way a call can (answered, a declared error, a handler
that fails), for the tests of call hooks and metrics: imported by them, or run as a program
like server.py (`python tests/outcomes_server.py --port 0`; with OUTCOMES_HANDLERS=async in
the environment, its handler is an async def, for --loop asyncio).
"""

if __name__ == "__main__":
    import sys
    from pathlib import Path

    # Run as a script, Python puts tests/ first on sys.path, where tests/avrohttp (the tests
    # of the package) would hide the package itself.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import os

import avro.errors
import avro.protocol

import avrohttp

OUTCOMES_PROTOCOL = avro.protocol.parse("""{
  "protocol": "Outcomes", "namespace": "test.hooks",
  "types": [{"type": "error", "name": "Refused", "fields": [{"name": "why", "type": "string"}]}],
  "messages": {
    "echo": {"request": [{"name": "query", "type": "string"}], "response": "string",
             "errors": ["Refused"]}
  }
}""")


class OutcomesResponder(avrohttp.Responder):
    """echo answers, or raises the declared error ("refuse"), or fails ("crash")."""

    def __init__(self, **options) -> None:
        super().__init__(OUTCOMES_PROTOCOL, **options)

    def handle_echo(self, query: str) -> str:
        if query == "refuse":
            raise avro.errors.AvroRemoteException({"why": "refused"})
        if query == "crash":
            raise RuntimeError("a bug in the handler")
        return query


class AsyncOutcomesResponder(OutcomesResponder):
    """The same, with an async def handler (which awaits before it answers): for the asyncio
    host, and for the eventlet host to refuse."""

    async def handle_echo(self, query: str) -> str:
        await asyncio.sleep(0)
        return OutcomesResponder.handle_echo(self, query)


if __name__ == "__main__":
    from avrohttp import cli

    # From the environment, not the command line: the workers of --workers get it too.
    asynchronous = os.environ.get("OUTCOMES_HANDLERS") == "async"
    raise SystemExit(cli.main(AsyncOutcomesResponder if asynchronous else OutcomesResponder))

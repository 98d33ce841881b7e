"""The relay on the eventlet host, on eventlet's own asyncio hub: the way in between.

A service that cannot leave eventlet at once can still use asyncio libraries there: on the
asyncio hub, eventlet's green threads run on an asyncio event loop, and a plain handler
waits for a coroutine with eventlet.asyncio.spawn_for_awaitable (docs/asyncio.md). Try it,
with `python server.py` running on port 8130:
`python -m examples.relay.on_eventlet_hub --port 8131`.
"""

import os
from typing import List, Optional

import avrohttp
from avrohttp import cli
from examples.relay.server import UPSTREAM
from protocol import EchoProtocol


class HubRelayResponder(avrohttp.Responder):
    """Answers AvroEcho calls with the answers of the upstream AvroEcho server: plain
    handlers, each waiting in its green thread for AsyncClient's coroutine."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)
        host, port = UPSTREAM.rsplit(":", 1)
        self.upstream = avrohttp.AsyncClient(EchoProtocol, host, int(port), retry=True)

    def handle_echo(self, query: str) -> str:
        return _wait_for(self.upstream.call("echo", query=query))

    def handle_split(self, query: str) -> str:
        return _wait_for(self.upstream.call("split", query=query))


def _wait_for(coroutine) -> object:
    import eventlet.asyncio  # imported once serving, after avrohttp.cli's start-up

    return eventlet.asyncio.spawn_for_awaitable(coroutine).wait()


def main(argv: Optional[List[str]] = None) -> int:
    # eventlet's asyncio hub, in this process and in each worker of --workers: eventlet reads
    # the variable when it makes its hub, as the server starts.
    os.environ.setdefault("EVENTLET_HUB", "asyncio")
    return cli.main(HubRelayResponder, argv)


if __name__ == "__main__":
    raise SystemExit(main())

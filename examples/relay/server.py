"""A relay on the asyncio host: an AvroEcho server whose handlers ask another AvroEcho server.

It shows a handler that does I/O, the asyncio way: `async def`, awaiting avrohttp.AsyncClient,
so that the event loop serves other calls meanwhile (docs/asyncio.md). Try it, with
`python server.py` running on port 8130: `python -m examples.relay.server --port 8131`, then
`python client.py --port 8131 --echo --query "Hello World"`. UPSTREAM=host:port points it
elsewhere.
"""

import os
from typing import List, Optional

import avrohttp
from avrohttp import cli
from protocol import EchoProtocol

UPSTREAM = os.environ.get("UPSTREAM", "127.0.0.1:8130")


class RelayResponder(avrohttp.Responder):
    """Answers AvroEcho calls with the answers of the upstream AvroEcho server."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)
        host, port = UPSTREAM.rsplit(":", 1)
        # Kept-alive connections to the upstream, one per call in flight, made on first use.
        self.upstream = avrohttp.AsyncClient(EchoProtocol, host, int(port), retry=True)

    async def handle_echo(self, query: str) -> str:
        return await self.upstream.call("echo", query=query)

    async def handle_split(self, query: str) -> str:
        return await self.upstream.call("split", query=query)


def main(argv: Optional[List[str]] = None) -> int:
    # async def handlers need the asyncio host: it is this program's default --loop.
    return cli.main(RelayResponder, argv, loop="asyncio")


if __name__ == "__main__":
    raise SystemExit(main())

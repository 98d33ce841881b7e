"""An Avro RPC server for the AvroEcho protocol, on eventlet.wsgi (or, with --loop asyncio,
on uvicorn's asyncio HTTP: the same responder runs on both).

Try it: `python server.py`, then `python client.py --echo --query "Hello World"` in another
terminal. Ctrl-C stops it, after it answers the calls already in flight.
"""

from typing import List, Optional

import avrohttp
from avrohttp import cli
from protocol import EchoProtocol


class EchoResponder(avrohttp.Responder):
    """Answers AvroEcho calls: the message `name` is answered by `handle_<name>`."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)

    def handle_echo(self, query: str) -> str:
        return query

    def handle_split(self, query: str) -> str:
        return query[: len(query) // 2]


# The WSGI application: POST an Avro call to any path, get the Avro answer back.
application = avrohttp.make_application(EchoResponder())


def main(argv: Optional[List[str]] = None) -> int:
    # Listen on 127.0.0.1:8130 and serve with eventlet.wsgi (which cli.main monkey-patches the
    # standard library for), with every option and limit of avrohttp.cli (see `--help`).
    return cli.main(EchoResponder, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""An Avro RPC server for the AvroEcho protocol, on eventlet.wsgi.

Try it: `python server.py`, then `python client.py --echo --query "Hello World"` in another
terminal. Ctrl-C stops it, after it answers the calls already in flight.
"""

import warnings

# eventlet warns on import that it is deprecated; README.md, "eventlet's status", says why
# this example still uses it. Only that warning is silenced.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet

# Patch the standard library first, so that sockets, time and threads all cooperate with
# eventlet's green threads.
eventlet.monkey_patch()

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
    # Listen on 127.0.0.1:8130 and serve with eventlet.wsgi, with every option and limit
    # of avrohttp.cli (see `python server.py --help`).
    return cli.main(EchoResponder, argv)


if __name__ == "__main__":
    raise SystemExit(main())

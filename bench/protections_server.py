"""The benchmark's "our protections, no Avro work": server.py's start-up and host, every
protection on (deadlines, limits, fair turns), and every HTTP rule of the application, with a
responder that does no Avro work: its respond() returns server.py's answer to the
benchmark's call, computed once at start-up.

It starts as server.py does, through avrohttp.cli.main, so it takes every option of
`python server.py --help`, --loop included: beside bare eventlet.wsgi (bench/bare_server.py)
or bare uvicorn (bench/uvicorn_server.py), it shows what the protections cost on each host;
beside server.py, what the Avro work costs.

Try it: `python bench/protections_server.py --port 0 [--loop asyncio]`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# server.py is in the repository's root; wire.py (which builds the request) is in tests/.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import server  # first, as server.py runs itself: whatever it sets up on import is set up
from avrohttp import cli, codec

from typing import Optional

import wire


class FixedAnswerResponder(server.EchoResponder):
    """server.py's EchoResponder, but that it answers every call with its answer to the
    benchmark's call (an echo of "Hello World"), whatever was asked: no Avro work."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = super().respond(codec.unframe(wire.call_body()))

    def respond(self, call_request: bytes, call=None, origin=None) -> bytes:
        return self.answer


def main(argv: Optional[list] = None) -> int:
    return cli.main(FixedAnswerResponder, argv, description=(
        "Answer every POST with server.py's answer to the benchmark's echo call, through "
        "server.py's own start-up and protections."))


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark's "our protections, no Avro work": fixed bytes served through the project's
own avrohttp.serve.serve(), with every protection on (deadlines, limits, fair turns).

Its answer is what server.py's application answers to the benchmark's request (computed once,
at start-up). Beside bare eventlet.wsgi (bench/bare_server.py), it shows what the protections
cost; beside server.py, what the Avro work costs.

Try it: `python bench/protections_server.py --port 0`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# server.py is in the repository's root; wire.py (which builds the request) is in tests/.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import server  # first: it monkey-patches the standard library for eventlet
import avrohttp.options
import avrohttp.serve

import argparse
import io
import logging
from typing import Callable, Iterable, NamedTuple, Optional

import wire

log = logging.getLogger("protections")


class FixedAnswer(NamedTuple):
    status: str
    headers: list
    body: bytes


def answer_in_process(app: Callable, body: bytes) -> FixedAnswer:
    """Call a WSGI app once with a POST of `body`, with no socket: its whole answer."""
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/", "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "avro/binary", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
    }
    started = []
    payload = b"".join(app(environ, lambda status, headers: started.append((status, headers))))
    status, headers = started[0]
    return FixedAnswer(status, list(headers), payload)


def make_fixed_application(answer: FixedAnswer) -> Callable:
    """A WSGI app that reads the request body, then sends `answer`, whatever was asked."""

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        # Reading the body is not Avro work: any server must do it, so this one does too.
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response(answer.status, answer.headers)
        return [answer.body]

    return application


def listen_arguments(description: str) -> argparse.ArgumentParser:
    """A command line with --host and --port, for this and bench/bare_server.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=avrohttp.options.DEFAULT_HOST,
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = listen_arguments(
        "Answer every POST with server.py's answer to the benchmark's echo call.").parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    answer = answer_in_process(server.application, wire.call_body())
    if not answer.status.startswith("200"):
        log.error("server.py's application answered %s to the benchmark's request: %r",
                  answer.status, answer.body[:200])
        return 1
    try:
        listener = avrohttp.serve.listen(args.host, args.port)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e.strerror or e)
        return 1
    host, port = listener.getsockname()[:2]
    log.info("fixed-bytes server listening on http://%s:%d/", host, port)
    try:
        avrohttp.serve.serve(listener, make_fixed_application(answer))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

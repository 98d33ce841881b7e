"""What the benchmark's fixed-bytes servers share: server.py's answer to the benchmark's call,
computed once in process, and the command line of --host and --port.

It imports no eventlet, so that a server on another stack (bench/uvicorn_server.py) can use
it as well as the eventlet ones (bench/bare_server.py, bench/protections_server.py).
"""

import argparse
import io
from typing import Callable, Iterable, NamedTuple

import avrohttp
import avrohttp.options


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


def echo_answer(body: bytes) -> FixedAnswer:
    """The answer of an AvroEcho server to `body`, from a responder of its own (for the echo
    call: a split is not answered alike). bench/run.py checks that it is server.py's answer."""
    from protocol import EchoProtocol

    class Echo(avrohttp.Responder):
        def handle_echo(self, query: str) -> str:
            return query

        def handle_split(self, query: str) -> list:
            raise NotImplementedError("the benchmark calls echo only")

    return answer_in_process(avrohttp.make_application(Echo(EchoProtocol)), body)


def listen_arguments(description: str) -> argparse.ArgumentParser:
    """A command line with --host and --port, for the benchmark's own servers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=avrohttp.options.DEFAULT_HOST,
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    return parser

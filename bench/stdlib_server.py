"""AvroEcho on the standard library's http.server, the way Avro's own Python sample does it.

Apache Avro's `sample_http_server.py` serves its protocol with http.server.HTTPServer and a
handler that makes a new Responder for each request and answers in HTTP/1.0, so each call
costs a new connection, one at a time. This file does the same for AvroEcho, so that
`bench/run.py --with-stdlib` shows what that pattern costs next to eventlet.

Try it: `python bench/stdlib_server.py --port 0`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # protocol.py is in the repository's root

import argparse
import http.server
import logging
from typing import Optional

import avro.ipc

from protocol import EchoProtocol

log = logging.getLogger("stdlib")


class EchoResponder(avro.ipc.Responder):
    """avro.ipc's own Responder, as in the sample (without this project's fixes)."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)

    def invoke(self, message, request: dict) -> str:
        query = request["query"]
        return query if message.name == "echo" else query[: len(query) // 2]


class EchoHandler(http.server.BaseHTTPRequestHandler):
    # As in the sample: a responder per request, the framed body read straight from the
    # socket, no Content-Length, and HTTP/1.0 (the handler's default), which closes the
    # connection after each response.
    def do_POST(self) -> None:
        responder = EchoResponder()
        call_request = avro.ipc.FramedReader(self.rfile).read_framed_message()
        response_body = responder.respond(call_request)
        self.send_response(200)
        self.send_header("Content-Type", "avro/binary")
        self.end_headers()
        avro.ipc.FramedWriter(self.wfile).write_framed_message(response_body)

    def log_message(self, format: str, *args) -> None:
        pass  # the sample logs every request to stderr; under load that is all it would do


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="AvroEcho on http.server, like Avro's sample.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        httpd = http.server.HTTPServer((args.host, args.port), EchoHandler)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e.strerror or e)
        return 1
    host, port = httpd.server_address[:2]
    log.info("stdlib AvroEcho server listening on http://%s:%d/", host, port)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

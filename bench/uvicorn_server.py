"""The asyncio host's limit: bare uvicorn (httptools and uvloop) answering every POST with
fixed bytes (server.py's answer to the benchmark's call), doing no Avro work and having none
of our protections.

Its configuration is the fastest honest one: httptools and uvloop, no access log, no logging
configuration of uvicorn's own (log_config=None), no proxy headers to look at, no lifespan
events, and no `server:` header; the `date:` header stays, as HTTP asks of a server with a
clock. With --workers N it runs as `uvicorn --workers N` does: the parent binds the port, and
N processes started by uvicorn's own supervisor (uvicorn.supervisors.Multiprocess) accept
on that one socket.

Try it: `python bench/uvicorn_server.py --port 0 [--workers 2]`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# protocol.py is in the repository's root; wire.py (which builds the request) is in tests/.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import logging
from typing import Optional

import uvicorn
from uvicorn.supervisors import Multiprocess

import wire
from bench.fixed_bytes import echo_answer, listen_arguments

log = logging.getLogger("bare")


class FixedBytesApplication:
    """An ASGI application that reads the request body, then sends fixed bytes."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers = [(b"content-type", b"avro/binary"),
                        (b"content-length", str(len(body)).encode())]

    async def __call__(self, scope: dict, receive, send) -> None:
        # Reading the body is not Avro work: any server must do it, so this one does too.
        more_body = True
        while more_body:
            more_body = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def main(argv: Optional[list] = None) -> int:
    parser = listen_arguments("Answer every POST with fixed bytes on bare uvicorn.")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, started by uvicorn's own supervisor as "
                             "`uvicorn --workers N` does (default: %(default)s)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    answer = echo_answer(wire.call_body())
    config = uvicorn.Config(
        FixedBytesApplication(answer.body), host=args.host, port=args.port,
        workers=args.workers, loop="uvloop", http="httptools", lifespan="off",
        interface="asgi3", access_log=False, log_config=None, proxy_headers=False,
        server_header=False)
    # What uvicorn.run() does, with the address actually bound said in between: uvicorn's
    # own line names port 0 as 0.
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    log.info("bare uvicorn%s listening on http://%s:%d/",
             f", {args.workers} workers" if args.workers > 1 else "", host, port)
    try:
        if args.workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

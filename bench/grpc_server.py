"""A gRPC peer: bench/echo.proto's echo served by gRPC Python's synchronous server, in the
shape of gRPC's helloworld example (greeter_server.py): a servicer, a ThreadPoolExecutor of
10 threads, an insecure port.

Try it: `python bench/grpc_server.py --port 0`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logging
from concurrent import futures
from typing import Optional

import grpc

from bench.fixed_bytes import listen_arguments
from bench.grpc_echo import echo_modules

log = logging.getLogger("grpc")
echo_pb2, echo_pb2_grpc = echo_modules()


class Echo(echo_pb2_grpc.EchoServicer):
    def Echo(self, request, context):
        return echo_pb2.EchoReply(answer=request.query)


def serve(host: str, port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port(f"{host}:{port}")
    server.start()
    log.info("gRPC Python (sync) listening on http://%s:%d/", host, port)
    server.wait_for_termination()


def main(argv: Optional[list] = None) -> int:
    parser = listen_arguments("Serve bench/echo.proto with gRPC Python's sync server.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        serve(args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A gRPC peer: bench/echo.proto's echo served by gRPC Python's asyncio server, grpc.aio, in
the shape of gRPC's helloworld example (async_greeter_server.py).

Try it: `python bench/grpc_aio_server.py --port 0`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import logging
from typing import Optional

import grpc

from bench.fixed_bytes import listen_arguments
from bench.grpc_echo import echo_modules

log = logging.getLogger("grpc")
echo_pb2, echo_pb2_grpc = echo_modules()


class Echo(echo_pb2_grpc.EchoServicer):
    async def Echo(self, request, context):
        return echo_pb2.EchoReply(answer=request.query)


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("gRPC Python (grpc.aio) listening on http://%s:%d/", host, port)
    await server.wait_for_termination()


def main(argv: Optional[list] = None) -> int:
    args = listen_arguments("Serve bench/echo.proto with grpc.aio.").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

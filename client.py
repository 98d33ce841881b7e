"""A client for the AvroEcho server: the EchoClient class, and a command line around it.

Try it, with server.py running: `python client.py --echo --query "Hello World"`.
"""

import argparse
import os
import sys
import time
from typing import List, Optional

import avro.errors

import avrohttp
import avrohttp.client
from avrohttp.client import DEFAULT_HOST, DEFAULT_PORT
from protocol import EchoProtocol


class EchoClient(avrohttp.Client):
    """Calls an AvroEcho server over one keep-alive HTTP connection.

    Takes avrohttp.Client's options (host, port, timeout, connect_timeout, ssl_context).
    echo and split change nothing on the server, so a call that meets a kept-alive
    connection closed by the server is sent once more, on a new one.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 **client_options) -> None:
        super().__init__(EchoProtocol, host, port, retry=True, **client_options)

    def echo(self, query: str) -> str:
        return self.call("echo", query=query)

    def split(self, query: str) -> str:
        return self.call("split", query=query)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the whole usage first
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = _OneLineParser(prog="client.py", description="Call an AvroEcho server.")
    parser.add_argument("-e", "--echo", action="store_true", help="send the echo message")
    parser.add_argument("-s", "--split", action="store_true", help="send the split message")
    parser.add_argument("-q", "--query", required=True, help="the string to send")
    avrohttp.client.add_arguments(parser)  # --host, --port, the timeouts and TLS
    args = parser.parse_args(argv)
    if not (args.echo or args.split):
        parser.error("choose a message: --echo, --split, or both")
    try:
        args.query.encode("utf-8")
    except UnicodeEncodeError:  # bytes that the terminal could not decode
        parser.error("argument -q/--query: not valid UTF-8")

    with EchoClient(**avrohttp.client.options_from(args, parser)) as client:
        for wanted, call, label in ((args.echo, client.echo, "Echo"),
                                    (args.split, client.split, "Split")):
            if not wanted:
                continue
            started = time.perf_counter()
            try:
                answer = call(args.query)
            except avrohttp.CallFailed as e:
                print(f"{parser.prog}: error: {e}", file=sys.stderr)
                return 1
            except avro.errors.AvroRemoteException as e:
                print(f"{parser.prog}: error: the server answered: {e}", file=sys.stderr)
                return 1
            print(f">>> {label}: {answer}")
            print(f"(took {time.perf_counter() - started:.4f} s)", flush=True)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # the output was cut short (`| head`, say): exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1)

"""A client for the AvroEcho server: the EchoClient class, and a command line around it.

Try it, with server.py running: `python client.py --echo --query "Hello World"`.
"""

import argparse
import http.client
import sys
import time
from typing import Optional

import avro.errors
import avro.ipc

import avro_fixes
from protocol import EchoProtocol

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8130
DEFAULT_TIMEOUT = 10.0  # seconds, for connecting and for each read


class CallFailed(Exception):
    """The server could not be reached, or did not answer with an Avro response."""


class _Transceiver(avro.ipc.HTTPTransceiver):
    """avro.ipc.HTTPTransceiver with a timeout, a clear error for a non-Avro answer, and
    framing without copies (avro_fixes.frame and unframe)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        # Not calling super().__init__: it connects at once, with no timeout.
        self.req_resource = "/"
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.remote_name = (host, port)

    def write_framed_message(self, message: bytes) -> None:
        self.conn.request("POST", self.req_resource, avro_fixes.frame(message),
                          {"Content-Type": "avro/binary"})

    def read_framed_message(self) -> bytes:
        response = self.conn.getresponse()
        content_type = response.getheader("Content-Type", "").split(";")[0]
        if response.status != 200 or content_type != "avro/binary":
            reason = response.read(200).decode("utf-8", "replace").strip()
            raise CallFailed(f"server answered {response.status} {response.reason}: {reason}")
        # The whole body at once (this also readies the connection for the next call), then
        # the frames out of it: cheaper than avro's FramedReader, which reads the response a
        # few bytes at a time.
        try:
            return avro_fixes.unframe(response.read())
        except avro_fixes.BadFraming as e:
            raise CallFailed(f"server answered with a broken Avro body: {e}") from e


class EchoClient:
    """Calls an AvroEcho server over one keep-alive HTTP connection.

    Raises CallFailed when the server cannot be reached or gives no Avro answer, and
    avro.errors.AvroRemoteException when the server answers with an Avro error.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._transceiver = _Transceiver(host, port, timeout)
        self._requestor = avro_fixes.FixedRequestor(EchoProtocol, self._transceiver)

    def echo(self, query: str) -> str:
        return self._call("echo", query)

    def split(self, query: str) -> str:
        return self._call("split", query)

    def _call(self, message: str, query: str) -> str:
        try:
            return self._requestor.request(message, {"query": query})
        except (OSError, http.client.HTTPException, avro.errors.ConnectionClosedException) as e:
            self.close()  # the next call starts on a fresh connection
            host, port = self._transceiver.remote_name
            raise CallFailed(f"cannot reach the server at {host}:{port}: {e}") from e
        except CallFailed:
            self.close()
            raise

    def close(self) -> None:
        self._transceiver.close()

    def __enter__(self) -> "EchoClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the whole usage first
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Optional[list] = None) -> int:
    parser = _OneLineParser(prog="client.py", description="Call an AvroEcho server.")
    parser.add_argument("-e", "--echo", action="store_true", help="send the echo message")
    parser.add_argument("-s", "--split", action="store_true", help="send the split message")
    parser.add_argument("-q", "--query", required=True, help="the string to send")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="server port (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the connection and for each answer "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    if not (args.echo or args.split):
        parser.error("choose a message: --echo, --split, or both")
    if not 1 <= args.port <= 65535:
        parser.error(f"argument --port: {args.port} is not a port number (1 to 65535)")
    if not args.timeout > 0:
        parser.error("argument --timeout: must be more than 0 seconds")
    try:
        args.query.encode("utf-8")
    except UnicodeEncodeError:  # bytes that the terminal could not decode
        parser.error("argument -q/--query: not valid UTF-8")

    with EchoClient(args.host, args.port, args.timeout) as client:
        for wanted, call, label in ((args.echo, client.echo, "Echo"),
                                    (args.split, client.split, "Split")):
            if not wanted:
                continue
            started = time.perf_counter()
            try:
                answer = call(args.query)
            except CallFailed as e:
                print(f"{parser.prog}: error: {e}", file=sys.stderr)
                return 1
            except avro.errors.AvroRemoteException as e:
                print(f"{parser.prog}: error: the server answered: {e}", file=sys.stderr)
                return 1
            print(f">>> {label}: {answer}")
            print(f"(took {time.perf_counter() - started:.4f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

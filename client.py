"""A client for the AvroEcho server: the EchoClient class, and a command line around it.

Try it, with server.py running: `python client.py --echo --query "Hello World"`.
"""

import argparse
import http.client
import re
import socket
import ssl
import sys
import time
from typing import Optional

import avro.errors
import avro.ipc

import avro_fixes
import avro_speed
from protocol import EchoProtocol

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8130
DEFAULT_TIMEOUT = 10.0  # seconds to wait for the answer, or for the next part of it
# Seconds to connect, TLS handshake included, unless the timeout above is shorter. A server
# that is up connects in milliseconds; a host that drops the attempt should not hold the
# caller for as long as a slow answer may take.
DEFAULT_CONNECT_TIMEOUT = 5.0
# The longest answer the client reads. An echo answer is about as long as its query, and
# server.py takes at most 1 MiB (its MAX_BODY_BYTES); this leaves room for a server that
# takes more, and keeps a broken or hostile server from filling the client's memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

# A kept-alive connection that the server has closed (idle too long, or restarted) fails
# with one of these when the next request is sent on it, before any answer comes back.
# http.client.RemoteDisconnected is a ConnectionResetError; over TLS, writing to a closed
# connection raises ssl.SSLEOFError, or SSLZeroReturnError if the server said goodbye.
_CLOSED_BY_SERVER = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                     ssl.SSLEOFError, ssl.SSLZeroReturnError)


class CallFailed(Exception):
    """The server could not be reached, or did not answer with an Avro response."""


class _Transceiver(avro.ipc.HTTPTransceiver):
    """avro.ipc.HTTPTransceiver with timeouts, TLS, one retry on a connection that the
    server has closed, a clear error for a non-Avro answer, and framing without copies
    (avro_speed.frame and unframe)."""

    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float,
                 ssl_context: Optional[ssl.SSLContext]) -> None:
        # Not calling super().__init__: it connects at once, with no timeout. Here the
        # connection is made on the first call, with connect_timeout; then its socket gets
        # `timeout` for every read (http.client has one timeout for both).
        self.req_resource = "/"
        self.conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        self.remote_name = (host, port)
        self.timeout = timeout
        self.ssl_context = ssl_context

    def transceive(self, request: bytes) -> bytes:
        body = avro_speed.frame(request)
        if self.conn.sock is None:
            self._connect()
            return self._read_answer(self._send(body))
        try:
            response = self._send(body)
        except _CLOSED_BY_SERVER:
            # The server closed this kept-alive connection before the call reached it, or
            # while it ran: send the same call once more, on a new connection. That is safe
            # here only because echo and split are idempotent: they compute an answer from
            # the query and change nothing, so running one twice does no harm. A service
            # whose messages have side effects (a payment, say) must not copy this blindly.
            # Never retried: a failure on a new connection (the server is down, or refuses
            # the call), a second failure, and a timeout (the server may still be working
            # on the call, and a copy of it would only add to its load).
            self.conn.close()
            self._connect()
            response = self._send(body)
        return self._read_answer(response)

    def _connect(self) -> None:
        try:
            self.conn.connect()
            if self.ssl_context is not None:
                self.conn.sock = self._start_tls(self.conn.sock)
        except TimeoutError as e:
            raise TimeoutError(f"timed out connecting (after {self.conn.timeout:g} s)") from e
        self.conn.sock.settimeout(self.timeout)

    def _start_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        """The TLS handshake, as http.client.HTTPSConnection would do it, and the socket
        closed if it fails: eventlet's green ssl module, in a monkey-patched program, would
        leave it open."""
        tls = self.ssl_context.wrap_socket(sock, server_hostname=self.remote_name[0],
                                           do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls

    def _send(self, body: bytes) -> http.client.HTTPResponse:
        self.conn.request("POST", self.req_resource, body, {"Content-Type": "avro/binary"})
        try:
            return self.conn.getresponse()
        except TimeoutError as e:
            raise TimeoutError(f"timed out waiting for the answer (after {self.timeout:g} s)"
                               ) from e

    def _read_answer(self, response: http.client.HTTPResponse) -> bytes:
        content_type = response.getheader("Content-Type", "").split(";")[0]
        if response.status != 200 or content_type != "avro/binary":
            reason = response.read(200).decode("utf-8", "replace").strip()
            raise CallFailed(f"server answered {response.status} {response.reason}: {reason}")
        # The whole body at once (this also readies the connection for the next call), then
        # the frames out of it: cheaper than avro's FramedReader, which reads the response a
        # few bytes at a time. One byte more than the limit, to tell whether it is over.
        body = response.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            raise CallFailed(f"server answered with more than {MAX_ANSWER_BYTES} bytes")
        try:
            return avro_speed.unframe(body)
        except avro_speed.BadFraming as e:
            raise CallFailed(f"server answered with a broken Avro body: {e}") from e


def _describe(error: Exception, tls: bool) -> str:
    """What went wrong, in words, without OpenSSL's source locations."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        if error.reason == "WRONG_VERSION_NUMBER":  # the server's first bytes are not TLS
            return "TLS failed: the server does not speak TLS here"
        return "TLS failed: " + re.sub(r" \(_ssl\.c:\d+\)", "", error.strerror or str(error))
    # What a server that expects TLS does with plain HTTP: it hangs up, or sends a TLS alert.
    hint = "" if tls else " (if the server serves HTTPS, call it with TLS)"
    if isinstance(error, http.client.RemoteDisconnected):
        return f"{error}{hint}"
    if isinstance(error, http.client.BadStatusLine):
        return f"the answer is not HTTP{hint}"
    return str(error)


class EchoClient:
    """Calls an AvroEcho server over one keep-alive HTTP connection.

    timeout: seconds to wait for the answer, or for the next part of it.
    connect_timeout: seconds to wait for the connection, TLS handshake included; by default
        DEFAULT_CONNECT_TIMEOUT, or timeout if that is shorter.
    ssl_context: call over HTTPS, trusting what this context trusts:
        ssl.create_default_context() trusts the system's certificate authorities, and
        ssl.create_default_context(cafile=...) only the one in that file.
    A call that fails on a kept-alive connection that the server has closed is sent once
    more, on a new connection (see _Transceiver.transceive).

    Raises CallFailed when the server cannot be reached or gives no Avro answer, and
    avro.errors.AvroRemoteException when the server answers with an Avro error.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: Optional[float] = None,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        if connect_timeout is None:
            connect_timeout = min(timeout, DEFAULT_CONNECT_TIMEOUT)
        self._transceiver = _Transceiver(host, port, timeout, connect_timeout, ssl_context)
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
            reason = _describe(e, tls=self._transceiver.ssl_context is not None)
            raise CallFailed(f"cannot reach the server at {host}:{port}: {reason}") from e
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
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="seconds to wait for the answer, or for the next part of it "
                             "(default: %(default)g)")
    parser.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                        help="seconds to wait for the connection, TLS handshake included "
                             f"(default: {DEFAULT_CONNECT_TIMEOUT:g}, or --timeout if shorter)")
    parser.add_argument("--tls", action="store_true",
                        help="call over HTTPS, trusting the system's certificate authorities")
    parser.add_argument("--cafile", metavar="FILE",
                        help="call over HTTPS, trusting only the certificate authority in "
                             "this PEM file")
    args = parser.parse_args(argv)
    if not (args.echo or args.split):
        parser.error("choose a message: --echo, --split, or both")
    if not 1 <= args.port <= 65535:
        parser.error(f"argument --port: {args.port} is not a port number (1 to 65535)")
    for flag, seconds in (("--timeout", args.timeout),
                          ("--connect-timeout", args.connect_timeout)):
        if seconds is not None and not 0 < seconds <= 86400:  # a socket refuses 1e300 s
            parser.error(f"argument {flag}: must be more than 0 seconds, and at most a day")
    try:
        args.query.encode("utf-8")
    except UnicodeEncodeError:  # bytes that the terminal could not decode
        parser.error("argument -q/--query: not valid UTF-8")
    ssl_context = None
    if args.tls or args.cafile:
        try:
            ssl_context = ssl.create_default_context(cafile=args.cafile)
        except ssl.SSLError:
            parser.error(f"argument --cafile: {args.cafile} holds no PEM certificate")
        except OSError as e:
            parser.error(f"argument --cafile: cannot read {args.cafile}: {e.strerror}")

    with EchoClient(args.host, args.port, args.timeout, args.connect_timeout,
                    ssl_context) as client:
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

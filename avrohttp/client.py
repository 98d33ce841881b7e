"""The client side of Avro RPC over HTTP, for any protocol: Client(protocol, host, port) and
its call(message, **parameters), over one keep-alive connection with timeouts, TLS and a
clear error for every failure.

Try it: `Client(EchoProtocol, "127.0.0.1", 8130).call("echo", query="Hi")`, with server.py
running. add_arguments() and options_from() give a command line the same client options.
The rules that avrohttp.AsyncClient shares (the retry rule, reading an answer, the words of
a CallFailed) are in avrohttp.client_rules, and importable from here too.
"""

import argparse
import http.client
import select
import socket
import ssl
from typing import TYPE_CHECKING, Iterable, List, Optional, Union

import avro.errors
import avro.ipc
import avro.protocol

from avrohttp import codec
from avrohttp import client_rules
from avrohttp.client_rules import (NOT_AVRO_BYTES, TRANSPORT_ERRORS, CallFailed,
                                   NoAnswerInTime, closed_while_idle, failure, is_avro_answer,
                                   no_answer_in_time_left, not_avro, not_sent, poller_of,
                                   resend, unframe_answer)
# Still importable from here, where they were first defined.
from avrohttp.client_rules import DeadlineExceeded as DeadlineExceeded
from avrohttp.client_rules import describe as describe
from avrohttp.context import time_left
from avrohttp.hooks import CallHook
from avrohttp.requestor import Requestor

if TYPE_CHECKING:
    from avrohttp.balancing import Balancer
    from avrohttp.endpoints import EndpointSpec, Endpoints

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8130
DEFAULT_TIMEOUT = 10.0  # seconds to wait for the answer, or for the next part of it
# Seconds to connect, TLS handshake included, unless the timeout above is shorter. A server
# that is up connects in milliseconds; a host that drops the attempt should not hold the
# caller for as long as a slow answer may take.
DEFAULT_CONNECT_TIMEOUT = 5.0
class _Connection(http.client.HTTPConnection):
    """http.client's connection, writing a request's headers and body in one send.

    http.client sends them apart: two system calls, and a server that wakes up for the
    headers, then again for the body. A call is a small body, so one send is enough: one
    system call and one wake-up of the server fewer per call.
    """

    # http.client's own, which typeshed's stubs leave out: the request's lines so far.
    _buffer: List[bytes]
    timeout: float  # always given (Transceiver): the connect timeout

    def _send_output(self, message_body=None, encode_chunked=False) -> None:
        if not isinstance(message_body, bytes) or encode_chunked:
            # http.client's private method, which typeshed's stubs leave out.
            return super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
        self._buffer.extend((b"", message_body))  # the blank line that ends the headers
        request = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self.send(request)


class Transceiver(avro.ipc.HTTPTransceiver):
    """avro.ipc.HTTPTransceiver with timeouts, TLS, a retry (if asked) on a connection that
    the server has closed, a clear error for a non-Avro answer, and framing without copies
    (codec.frame and unframe)."""

    conn: _Connection  # ours (below), not avro's plain HTTPConnection

    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float,
                 ssl_context: Optional[ssl.SSLContext], retry: bool = False) -> None:
        # Not calling super().__init__: it connects at once, with no timeout. Here the
        # connection is made on the first call, with connect_timeout; then its socket gets
        # `timeout` for every read (http.client has one timeout for both).
        self.req_resource = "/"
        self.conn = _Connection(host, port, timeout=connect_timeout)
        self.remote_name = (host, port)
        self.tls_name = host  # the name that the TLS certificate must have (endpoints: a name)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.retry = retry
        # The connection that _poller polls (drop_if_closed_while_idle).
        self._polled: Optional[socket.socket] = None
        self._poller: Optional[select.poll] = None

    def drop_if_closed_while_idle(self) -> None:
        """Close the kept-alive connection if the server closed it while it was idle (its
        idle timeout, a stop): nothing was sent on it, so a new one is safe for any message,
        retry or not. One poll() of a poller kept per connection, a quarter of a microsecond:
        the clients check before each call, since a server may close a connection at any
        time (a check made only after some time idle lost the calls right after a stop)."""
        sock: Optional[socket.socket] = self.conn.sock
        if sock is None:
            return
        if sock is not self._polled:  # a new connection: a poller of its own
            self._polled = sock
            self._poller = poller_of(sock)
        if closed_while_idle(sock, self._poller):
            self.conn.close()

    def transceive(self, request: bytes) -> bytes:
        body = codec.frame(request)
        if self.conn.sock is None:
            self._connect()
            return self._read_answer(self._send(body))
        try:
            response = self._send(body)
        except OSError as error:
            if not resend(error, self.retry):
                raise
            self.conn.close()
            self._connect()
            response = self._send(body)
        return self._read_answer(response)

    def _connect(self) -> None:
        try:
            self.conn.connect()
            if self.ssl_context is not None:
                self.conn.sock = self._start_tls(self.conn.sock, self.ssl_context)
        except TimeoutError as e:
            raise TimeoutError(f"timed out connecting (after {self.conn.timeout:g} s)") from e
        self.conn.sock.settimeout(self.timeout)

    def set_timeouts(self, timeout: float, connect_timeout: float) -> None:
        """Change the timeouts, for the connection as it is too."""
        self.timeout = timeout
        self.conn.timeout = connect_timeout
        if self.conn.sock is not None:
            self.conn.sock.settimeout(timeout)

    def _start_tls(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """The TLS handshake, as http.client.HTTPSConnection would do it, and the socket
        closed if it fails: eventlet's green ssl module, in a monkey-patched program, would
        leave it open."""
        tls = context.wrap_socket(sock, server_hostname=self.tls_name,
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
            raise NoAnswerInTime(f"no answer within {self.timeout:g} s") from e

    def _read_answer(self, response: http.client.HTTPResponse) -> bytes:
        if not is_avro_answer(response.status, response.getheader("Content-Type", "")):
            raise not_avro(response.status, response.reason, response.read(NOT_AVRO_BYTES))
        # The whole body at once (this also readies the connection for the next call), then
        # the frames out of it: cheaper than avro's FramedReader, which reads the response a
        # few bytes at a time. One byte more than the limit, to tell whether it is over.
        return unframe_answer(response.read(client_rules.MAX_ANSWER_BYTES + 1))


def connect_timeout_for(timeout: float, connect_timeout: Optional[float]) -> float:
    """The connect timeout: as given, or DEFAULT_CONNECT_TIMEOUT, or timeout if shorter."""
    if connect_timeout is None:
        return min(timeout, DEFAULT_CONNECT_TIMEOUT)
    return connect_timeout


class Client:
    """Calls an Avro RPC server over one keep-alive HTTP connection, made on the first call.

    protocol: the protocol's JSON text (best: the server and other implementations then see
        it as written, one-way messages and docs included), or a protocol avro has parsed.
    timeout: seconds to wait for the answer, or for the next part of it.
    connect_timeout: seconds to wait for the connection, TLS handshake included; by default
        DEFAULT_CONNECT_TIMEOUT, or timeout if that is shorter.
    ssl_context: call over HTTPS, trusting what this context trusts:
        ssl.create_default_context() trusts the system's certificate authorities, and
        ssl.create_default_context(cafile=...) only the one in that file.
    retry: send a call once more, on a new connection, if the server had closed the
        kept-alive one (see Transceiver.transceive). Only for idempotent messages.
    call_hooks: avrohttp.hooks.CallHook objects run around each call (avrohttp.metrics's
        ClientMetrics, say).
    endpoints: in place of host and port, servers to balance the calls over, one keep-alive
        connection each: [("10.0.0.1", 8130), "10.0.0.2:8130"], or a name with several
        addresses (["echo.svc:8130"]: each, looked up again every 30 s). An endpoint that
        cannot be reached is set aside a while; avrohttp.endpoints has the rules.

    call() raises CallFailed when the server cannot be reached or gives no Avro answer, and
    when the server answers with an Avro error, one of the two subclasses of
    avro.errors.AvroRemoteException: avrohttp.DeclaredError for an error the message declares
    (its `name` and `datum`), avrohttp.RemoteSystemError for a system error (its `message`).
    It raises avrohttp.BadArguments, sending nothing, for parameters that do not fit the
    message. A one-way message's call returns None.

    Deadlines: every call tells the server its timeout (avrohttp.context.TIMEOUT_KEY). A call
    made inside a handler whose own caller has less time left than `timeout` sends, and waits
    for, that time instead; if none is left, it raises DeadlineExceeded and sends nothing.
    """

    def __init__(self, protocol: Union[str, avro.protocol.Protocol], host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: Optional[float] = None,
                 ssl_context: Optional[ssl.SSLContext] = None, retry: bool = False,
                 call_hooks: Iterable[CallHook] = (),
                 endpoints: Union["Endpoints", Iterable["EndpointSpec"], None] = None) -> None:
        self.balancer: Optional["Balancer"] = None
        if endpoints is not None:  # several servers (avrohttp.balancing)
            from avrohttp.balancing import Balancer
            from avrohttp.endpoints import endpoints_for
            self.balancer = Balancer(endpoints_for(endpoints, host, port), protocol, timeout,
                                     connect_timeout_for(timeout, connect_timeout),
                                     ssl_context, retry, call_hooks)
            return
        self.transceiver = Transceiver(host, port, timeout,
                                       connect_timeout_for(timeout, connect_timeout),
                                       ssl_context, retry)
        self.requestor = Requestor(protocol, self.transceiver, call_hooks)
        self.requestor.timeout = timeout

    def call(self, message: str, /, **parameters) -> object:
        """Call `message` with these parameters, and return the server's answer."""
        left = time_left()  # inside a handler whose caller gave a deadline: the time left
        if self.balancer is not None:
            return self.balancer.call(message, parameters, left)
        if left is not None and left < self.transceiver.timeout:
            return self._call_within(left, message, parameters)
        return self._call(message, parameters)

    def _call_within(self, left: float, message: str, parameters: dict) -> object:
        """The call, sent with the time its caller has left, and waited for that long."""
        if left <= 0:
            raise not_sent(message)
        transceiver = self.transceiver
        own = transceiver.timeout, transceiver.conn.timeout
        transceiver.set_timeouts(left, min(left, own[1]))
        try:
            return self._call(message, parameters, left)
        except CallFailed as e:
            if isinstance(e.__cause__, TimeoutError):  # NoAnswerInTime, or in connecting
                raise no_answer_in_time_left(transceiver.remote_name, message, left) from e
            raise
        finally:
            transceiver.set_timeouts(*own)

    def _call(self, message: str, parameters: dict, timeout: Optional[float] = None) -> object:
        self.transceiver.drop_if_closed_while_idle()
        answered = self.transceiver.conn.sock is not None  # kept alive: it had answered
        try:
            return self.requestor.request(message, parameters, timeout)
        except TRANSPORT_ERRORS as e:
            self.close()  # the next call starts on a fresh connection
            raise failure(e, self.transceiver.remote_name,
                          tls=self.transceiver.ssl_context is not None,
                          answered=answered) from e
        except CallFailed:
            self.close()
            raise

    def close(self) -> None:
        if self.balancer is not None:
            return self.balancer.close()
        self.transceiver.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the client's options to a command line: --host, --port, the timeouts and TLS."""
    add = parser.add_argument
    add("--host", default=DEFAULT_HOST, help="server address (default: %(default)s)")
    add("--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)")
    add("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="seconds to wait for the answer, or for the next part of it (default: %(default)g)")
    add("--connect-timeout", type=float, metavar="SECONDS",
        help="seconds to wait for the connection, TLS handshake included "
             f"(default: {DEFAULT_CONNECT_TIMEOUT:g}, or --timeout if shorter)")
    add("--tls", action="store_true",
        help="call over HTTPS, trusting the system's certificate authorities")
    add("--cafile", metavar="FILE",
        help="call over HTTPS, trusting only the certificate authority in this PEM file")
    add("--certfile", metavar="FILE",
        help="call over HTTPS with this client certificate, for a server that asks for one "
             "(mutual TLS): a PEM file, the client's certificate first, then any "
             "intermediate ones")
    add("--keyfile", metavar="FILE", help="the client certificate's private key, a PEM file")


def options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Client's keyword arguments from the options of add_arguments(); parser.error() on a
    bad one."""
    if not 1 <= args.port <= 65535:
        parser.error(f"argument --port: {args.port} is not a port number (1 to 65535)")
    for flag, seconds in (("--timeout", args.timeout),
                          ("--connect-timeout", args.connect_timeout)):
        if seconds is not None and not 0 < seconds <= 86400:  # a socket refuses 1e300 s
            parser.error(f"argument {flag}: must be more than 0 seconds, and at most a day")
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together: give both, or neither")
    ssl_context = None
    if args.tls or args.cafile or args.certfile:
        try:
            ssl_context = ssl.create_default_context(cafile=args.cafile)
        except ssl.SSLError:
            parser.error(f"argument --cafile: {args.cafile} holds no PEM certificate")
        except OSError as e:
            parser.error(f"argument --cafile: cannot read {args.cafile}: {e.strerror}")
        if args.certfile:
            from avrohttp import tls  # loaded only for a client certificate
            try:
                tls.load_certificate(ssl_context, args.certfile, args.keyfile)
            except tls.BadTLSFile as e:
                parser.error(str(e))
    return dict(host=args.host, port=args.port, timeout=args.timeout,
                connect_timeout=args.connect_timeout, ssl_context=ssl_context)

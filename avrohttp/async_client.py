"""The client side of Avro RPC over HTTP on asyncio: AsyncClient(protocol, host, port) and
its `await call(message, **parameters)`, with avrohttp.Client's options, errors, retry rule
and hooks, over keep-alive connections: one per call in flight, each kept for the next call.

Its HTTP is a minimal HTTP/1.1 client on asyncio's streams (avrohttp.async_connection): it
was the fastest of the three measured (aiohttp, httpx, and this), and it needs no package
(docs/asyncio.md, "The async client", has the figures; bench/async_client_libraries.py
measures them). Try it, with server.py running:

    async with AsyncClient(EchoProtocol, "127.0.0.1", 8130) as client:
        print(await client.call("echo", query="Hi"))
"""

import asyncio
import collections
import ssl
from typing import TYPE_CHECKING, Deque, Dict, Iterable, List, Optional, Tuple, Union

import avro.errors
import avro.protocol

from avrohttp import client, client_rules, hooks
from avrohttp.arguments import BadArguments
# MAX_HEAD_BYTES is imported from here too, where it was first defined.
from avrohttp.async_connection import MAX_HEAD_BYTES as MAX_HEAD_BYTES
from avrohttp.async_connection import _Connection
from avrohttp.client import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, CallFailed
from avrohttp.context import time_left
from avrohttp.protocol import as_written
from avrohttp.requestor import SEND_AGAIN

if TYPE_CHECKING:
    from avrohttp.async_balancing import AsyncBalancer
    from avrohttp.endpoints import EndpointSpec, Endpoints

# Connections open at once, so calls in flight at once; more calls wait for a connection. A
# program that gathers ten thousand calls then does not open ten thousand sockets.
MAX_CONNECTIONS = 100
# How many lengths of a request's body the client keeps a head for (AsyncClient.request_head).
REQUEST_HEADS_KEPT = 64
class AsyncClient:
    """Calls an Avro RPC server from asyncio, over keep-alive HTTP connections.

    The options and errors are avrohttp.Client's: protocol, host, port, timeout,
    connect_timeout, ssl_context, retry and call_hooks mean what they mean there, and call()
    raises CallFailed, DeclaredError and RemoteSystemError with the same words. A one-way
    message's call returns None.

    Calls may run at once (asyncio.gather): each call in flight has a connection of its
    own, up to MAX_CONNECTIONS; a call then waits for one to be free. A connection stays
    open for the next call, and each has its own Requestor (the handshake's state is per
    sequence of calls). `hooks` is the avrohttp.hooks.Hooks that all of them run; add a hook
    with client.hooks.append(hook).

    endpoints: as avrohttp.Client's, in place of host and port. Each endpoint gets a pool of
    its own, of up to MAX_CONNECTIONS connections (avrohttp.async_balancing).
    """

    def __init__(self, protocol: Union[str, avro.protocol.Protocol], host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: Optional[float] = None,
                 ssl_context: Optional[ssl.SSLContext] = None, retry: bool = False,
                 call_hooks: Iterable[hooks.CallHook] = (),
                 endpoints: Union["Endpoints", Iterable["EndpointSpec"], None] = None) -> None:
        self.protocol = as_written(protocol)  # parsed once, for every connection's Requestor
        self.remote_name: Tuple[str, int] = (host, port)
        self.tls_name = host  # the name that the TLS certificate must have
        self.timeout = timeout
        self.connect_timeout = client.connect_timeout_for(timeout, connect_timeout)
        self.ssl_context = ssl_context
        self.retry = retry
        self.hooks = hooks.Hooks(call_hooks)
        name = f"[{host}]" if ":" in host else host  # an IPv6 address, in brackets
        self._request_start = (b"POST / HTTP/1.1\r\nHost: %s:%d\r\n"
                               b"Content-Type: avro/binary\r\nContent-Length: "
                               % (name.encode("idna"), port))
        # The head of a request, by the body's length: a call's head is looked up, not
        # formatted (0.1 µs a call, timeit; 1,200 instructions, callgrind). A body of the same
        # message has much the same length; REQUEST_HEADS_KEPT bound the lengths kept.
        self.request_heads: Dict[int, bytes] = {}
        self._connections: List[_Connection] = []
        # The connections that no call has, and the calls that wait for one (futures, in
        # their order) once MAX_CONNECTIONS are open: a freed connection goes to the first
        # of them, so that a connection is idle only while no call waits. A semaphore did
        # the counting before: its acquire() and release() cost a call 0.4 µs (timeit).
        self._idle: List[_Connection] = []
        self._waiting: Deque[asyncio.Future] = collections.deque()
        self.balancer: Optional["AsyncBalancer"] = None
        if endpoints is not None:  # several servers (avrohttp.async_balancing)
            from avrohttp.async_balancing import AsyncBalancer
            from avrohttp.endpoints import endpoints_for
            self.balancer = AsyncBalancer(endpoints_for(endpoints, host, port), self.protocol,
                                          timeout, self.connect_timeout, ssl_context, retry,
                                          self.hooks)

    def request_head(self, body_length: int) -> bytes:
        """The head of a request whose body has this length (request_heads)."""
        head = self._request_start + b"%d\r\n\r\n" % body_length
        if len(self.request_heads) < REQUEST_HEADS_KEPT:
            self.request_heads[body_length] = head
        return head

    async def call(self, message: str, /, **parameters) -> object:
        """Call `message` with these parameters, and return the server's answer."""
        left = time_left()  # inside a handler whose caller gave a deadline: the time left
        if self.balancer is not None:
            return await self.balancer.call(message, parameters, left)
        if left is not None and left < self.timeout:
            return await self._call_within(left, message, parameters)
        return await self._call(message, parameters)

    async def _call_within(self, left: float, message: str, parameters: dict) -> object:
        """The call, sent with the time its caller has left, and waited for that long (as
        avrohttp.Client's)."""
        if left <= 0:
            raise client_rules.not_sent(message)
        try:
            return await self._call(message, parameters, left)
        except CallFailed as e:
            if isinstance(e.__cause__, TimeoutError):  # NoAnswerInTime, or in connecting
                raise client_rules.no_answer_in_time_left(self.remote_name, message,
                                                          left) from e
            raise

    async def _call(self, message: str, parameters: dict,
                    timeout: Optional[float] = None) -> object:
        connection = self._idle.pop() if self._idle else await self._free_connection()
        answered = connection.writer is not None  # kept alive: it had answered (failure())
        try:
            if timeout is None:
                plain = connection.requestor.plain_call(message)  # see Requestor.request
                if plain is not None:
                    answer = plain.answer(
                        await connection.transceive(plain.request(parameters)))
                    if answer is not SEND_AGAIN:
                        return answer
                return await connection.call(message, parameters)
            connection.timeout = timeout
            try:
                return await connection.call(message, parameters, timeout)
            finally:
                connection.timeout = self.timeout
        except client.TRANSPORT_ERRORS as e:
            connection.close()  # the next call on it starts on a fresh connection
            raise client.failure(e, self.remote_name, self.ssl_context is not None,
                                 answered) from e
        except (avro.errors.AvroException, BadArguments):
            # An Avro error of the call: its answer was read whole (or nothing was sent, for
            # a message that the protocol lacks), so the connection can go on.
            raise
        except BaseException:  # CallFailed, a cancelled call: the answer was not read
            connection.close()
            raise
        finally:
            self._put_back(connection)

    async def _free_connection(self) -> _Connection:
        """A new connection, or, once MAX_CONNECTIONS are open, the next one a call frees."""
        if len(self._connections) < MAX_CONNECTIONS:
            connection = _Connection(self)
            self._connections.append(connection)
            return connection
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # given one, then cancelled
                self._put_back(waiter.result())
            raise

    def _put_back(self, connection: _Connection) -> None:
        """Give a connection that a call is done with to the first call that waits, if any
        does (and has not been cancelled); or keep it for the next call."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def close(self) -> None:
        """Close every connection; a call in flight on one of them fails."""
        if self.balancer is not None:
            await self.balancer.close()
        writers = [connection.writer for connection in self._connections if connection.writer]
        for connection in self._connections:
            connection.close()
        for writer in writers:
            try:
                await writer.wait_closed()
            except OSError:  # it failed while closing: it is closed all the same
                pass

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

"""The client side of Avro RPC over HTTP on asyncio: AsyncClient(protocol, host, port) and
its `await call(message, **parameters)`, with avrohttp.Client's options, errors, retry rule
and hooks, over keep-alive connections: one per call in flight, each kept for the next call.

Its HTTP is a minimal HTTP/1.1 client on asyncio's streams, in this module: it was the
fastest of the three measured (aiohttp, httpx, and this), and it needs no package
(docs/asyncio.md, "The async client", has the figures; bench/async_client_libraries.py
measures them). Try it, with server.py running:

    async with AsyncClient(EchoProtocol, "127.0.0.1", 8130) as client:
        print(await client.call("echo", query="Hi"))
"""

import asyncio
import collections
import http.client
import os
import re
import ssl
import time
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, List, NoReturn,
                    Optional, Tuple, Union)

import avro.errors
import avro.protocol

from avrohttp import client, codec, hooks
from avrohttp.arguments import BadArguments
from avrohttp.client import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, CallFailed,
                             NoAnswerInTime)
from avrohttp.context import time_left
from avrohttp.protocol import as_written
from avrohttp.requestor import SEND_AGAIN, Requestor

if TYPE_CHECKING:
    from avrohttp.async_balancing import AsyncBalancer
    from avrohttp.endpoints import EndpointSpec, Endpoints

# Connections open at once, so calls in flight at once; more calls wait for a connection. A
# program that gathers ten thousand calls then does not open ten thousand sockets.
MAX_CONNECTIONS = 100
# How many lengths of a request's body the client keeps a head for (AsyncClient.request_head).
REQUEST_HEADS_KEPT = 64
# The longest status line and headers of an answer, as http.client's limit of a line.
MAX_HEAD_BYTES = 64 * 1024


# An answer's status line, and the headers that the client reads, found in the head (in
# lower case) with one search; the others (Date, Server...) are not split out.
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d\d\d)(?: ([^\r]*))?\r\n")
_HEADERS = re.compile(rb"\r\n(content-length|content-type|transfer-encoding|connection)"
                      rb"[ \t]*:[ \t]*([^\r]*)")


class _Answer:
    """What the client reads of an answer's head: status, reason, Content-Type, whether it
    carries an Avro response, the body's length (None if it is chunked or runs to the end of
    the connection), whether the connection can carry the next call, and whether it is the
    usual answer (all three: Avro, a length, kept alive). Never changed once
    made: a connection keeps the last one for the next head with the same bytes."""

    __slots__ = ("status", "reason", "content_type", "avro", "length", "chunked", "keep_alive",
                 "usual")

    def __init__(self, head: bytes) -> None:
        status_line = _STATUS_LINE.match(head)
        if status_line is None:
            raise http.client.BadStatusLine(head[:head.find(b"\r\n")].decode("latin-1"))
        minor_version, status, reason = status_line.groups()
        self.status = int(status)
        self.reason = (reason or b"").decode("latin-1")
        headers = dict(_HEADERS.findall(head.lower()))
        self.content_type = headers.get(b"content-type", b"").decode("latin-1")
        self.avro = client.is_avro_answer(self.status, self.content_type)
        self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        self.length = 0 if self.status in (204, 304) else None  # answers with no body
        if not self.chunked and b"content-length" in headers:
            try:
                self.length = int(headers[b"content-length"])
            except ValueError:
                raise http.client.HTTPException(
                    f"bad Content-Length: {headers[b'content-length']!r}") from None
        connection = headers.get(b"connection", b"")
        self.keep_alive = (b"close" not in connection
                           and (minor_version == b"1" or b"keep-alive" in connection)
                           and (self.chunked or self.length is not None))
        # An Avro answer of a known length on a connection that goes on: the usual answer.
        self.usual = self.avro and self.keep_alive and self.length is not None


class _Connection:
    """One keep-alive HTTP/1.1 connection, made on its first call, and its Requestor: one
    call at a time, as on Client's connection. Closed after a failure; the next call on it
    connects anew."""

    def __init__(self, owner: "AsyncClient") -> None:
        self.owner = owner
        self.remote_name = owner.remote_name
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.clock: Callable[[], float] = time.monotonic  # the loop's time (_connect)
        # The timeout is one timer per connection, not one per read: asyncio.timeout around
        # each read cost a tenth of the calls per second. A read that waits moves `deadline`
        # on; the timer, when it fires, waits on until the deadline if an answer is awaited
        # (then aborts the connection, and the read ends), or goes away if none is.
        self.deadline = 0.0
        self.awaiting = False
        self.watchdog: Optional[asyncio.TimerHandle] = None
        self.timed_out = False
        # The last answer's head, and what was read of it. A server sends the same head for
        # every answer of the same size (with the same Date, within a second), so the next
        # is compared, not parsed: 2.6 µs a call down to 0.1 µs (timeit; 27,000 instructions
        # of the 100,000 that AsyncClient spent over a bare streams loop, by callgrind).
        self.last_head = b""
        self.last_answer: Optional[_Answer] = None
        self.requestor = Requestor(owner.protocol, self)
        self.requestor.hooks = owner.hooks  # one list of hooks for all the connections
        self.requestor.timeout = owner.timeout
        self.timeout = owner.timeout  # this call's: less inside a handler (AsyncClient.call)

    async def call(self, message: str, parameters: dict, timeout: Optional[float] = None,
                   call: Optional[hooks.Call] = None) -> object:
        """Requestor.exchange, driven with this connection's transceive."""
        exchange = self.requestor.exchange(message, parameters, timeout, call)
        # send(None) starts the exchange, then send(answer), or throw(error) into it.
        step: Callable[[Any], bytes] = exchange.send
        value: Union[bytes, BaseException, None] = None
        while True:
            try:
                request = step(value)
            except StopIteration as done:
                return done.value
            try:
                step, value = exchange.send, await self.transceive(request)
            except BaseException as error:  # thrown into the exchange: the hooks see it
                step, value = exchange.throw, error

    async def transceive(self, request: bytes) -> bytes:
        """Send the call (headers and body in one write), and read its answer, in one
        coroutine: a coroutine apiece for the head and the body cost a call 0.3 µs more."""
        body = codec.frame(request)
        owner = self.owner
        request = (owner.request_heads.get(len(body)) or owner.request_head(len(body))) + body
        fresh = self.writer is None
        if fresh:
            await self._connect()
        try:
            reader, writer = self.reader, self.writer
            assert reader is not None and writer is not None  # connected, now or before
            writer.write(request)
            self._watch()
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as e:
            head, reader = await self._head_again(request, fresh, e)
        self.deadline = self.clock() + self.timeout  # and now for the body
        answer = self.last_answer
        if head != self.last_head or answer is None:
            answer = self.last_answer = _Answer(head[:-2])
            self.last_head = head
        try:
            length = answer.length
            if answer.usual and length is not None and length <= client.MAX_ANSWER_BYTES:
                # Nothing to check but the frames: 1,200 instructions a call fewer (callgrind).
                return client.unframe_answer(await reader.readexactly(length))
            return await self._read_body(answer)
        except asyncio.IncompleteReadError as e:
            self._check_time(e)
            raise http.client.IncompleteRead(e.partial, e.expected) from e
        finally:
            self.awaiting = False

    async def _read_body(self, answer: _Answer) -> bytes:
        """Read an answer's body, up to the limit of its kind; close the connection if it
        cannot go on; and return its Avro message, or raise CallFailed if it is not Avro."""
        limit = client.MAX_ANSWER_BYTES if answer.avro else client.NOT_AVRO_BYTES
        if answer.length is not None:
            body = await self._reader().readexactly(min(answer.length, limit + 1))
        elif answer.chunked:
            body = await self._read_chunks(limit)
        else:
            body = await self._read_to_the_end(limit)
        if not answer.keep_alive or len(body) > limit:
            self.close()  # the rest of the body is not read: the connection cannot go on
        if not answer.avro:
            raise client.not_avro(answer.status, answer.reason, body)
        return client.unframe_answer(body)

    async def _head_again(self, request: bytes, fresh: bool,
                          error: Exception) -> Tuple[bytes, asyncio.StreamReader]:
        """The answer's head did not come (`error`): raise why, in http.client's words; or, if
        the retry rule (Client's: avrohttp.client.resend) says so, send the call once more on
        a new connection and return its answer's head, and the new connection's reader."""
        try:
            self._no_head(error)
        except OSError as failure:
            if fresh or not client.resend(failure, self.owner.retry):
                raise
        self.close()
        await self._connect()
        try:
            reader, writer = self.reader, self.writer
            assert reader is not None and writer is not None  # connected, just now
            writer.write(request)
            self._watch()
            return await reader.readuntil(b"\r\n\r\n"), reader
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as e:
            self._no_head(e)

    def _no_head(self, error: Exception) -> NoReturn:
        """Raise why the answer's head did not come, as http.client says it."""
        if isinstance(error, asyncio.IncompleteReadError):
            self._check_time(error)
            if error.partial:
                raise http.client.BadStatusLine(error.partial[:80].decode("latin-1")) from error
            # What http.client raises here; a ConnectionResetError, so the retry rule's.
            raise http.client.RemoteDisconnected(
                "Remote end closed connection without response") from error
        if isinstance(error, asyncio.LimitOverrunError):
            raise http.client.LineTooLong("answer head") from error
        raise error

    async def _connect(self) -> None:
        owner = self.owner
        host, port = self.remote_name
        tls = owner.ssl_context
        connecting = asyncio.open_connection(host, port, ssl=tls, limit=MAX_HEAD_BYTES,
                                             server_hostname=owner.tls_name if tls else None)
        connect_timeout = min(owner.connect_timeout, self.timeout)
        try:
            self.reader, self.writer = await asyncio.wait_for(connecting, connect_timeout)
        except asyncio.TimeoutError as e:  # TimeoutError itself, from Python 3.11 on
            raise TimeoutError(f"timed out connecting (after {connect_timeout:g} s)") from e
        except OSError as e:
            if e.errno is None or isinstance(e, ssl.SSLError):
                raise
            # asyncio words it "Connect call failed ('127.0.0.1', 8130)"; Client's error
            # (the system's words) says why.
            raise type(e)(e.errno, os.strerror(e.errno)) from e
        self.loop = asyncio.get_running_loop()
        # asyncio's own loops tell the time with time.monotonic, through a method of
        # BaseEventLoop; called without it, two readings a call cost 1,000 instructions
        # fewer (callgrind). Another loop (uvloop) keeps its own clock.
        self.clock = (time.monotonic if type(self.loop).time is asyncio.BaseEventLoop.time
                      else self.loop.time)

    async def _read_to_the_end(self, limit: int) -> bytes:
        """A body with neither a length nor chunks: it ends with the connection."""
        parts = []
        size = 0
        reader = self._reader()
        while size <= limit and (part := await self._read(reader.read(limit + 1))):
            parts.append(part)
            size += len(part)
        self._check_time(None)  # the end of the body, or the timeout's abort?
        return b"".join(parts)

    async def _read_chunks(self, limit: int) -> bytes:
        reader = self._reader()
        chunks = []
        size = 0
        while size <= limit:
            line = await self._read(reader.readuntil(b"\r\n"))
            try:
                length = int(line.split(b";")[0], 16)
            except ValueError:
                raise http.client.HTTPException(f"bad chunk size: {line[:80]!r}") from None
            if length == 0:
                while await self._read(reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # a trailer: ignored, as http.client ignores it
                break
            chunks.append(await self._read(reader.readexactly(min(length, limit + 1))))
            size += len(chunks[-1])
            if size <= limit:
                await self._read(reader.readexactly(2))  # the chunk's CRLF
        return b"".join(chunks)

    def _reader(self) -> asyncio.StreamReader:
        """The connection's reader, for the reads of an answer: it is connected."""
        assert self.reader is not None
        return self.reader

    async def _read(self, awaitable) -> bytes:
        """A part of the answer: the timeout starts again once it has come."""
        data = await awaitable
        self.deadline = self.clock() + self.timeout
        return data

    def _watch(self) -> None:
        """Start the timeout of an answer: Client's, for the answer or the next part of it."""
        self.deadline = self.clock() + self.timeout
        self.awaiting = True
        self.timed_out = False
        if self.watchdog is None:
            assert self.loop is not None  # set when it connected
            self.watchdog = self.loop.call_at(self.deadline, self._time_up)

    def _time_up(self) -> None:
        self.watchdog = None
        if not self.awaiting:
            return
        assert self.loop is not None and self.writer is not None  # awaiting: connected
        if self.clock() < self.deadline:  # a part came in time: wait for the next
            self.watchdog = self.loop.call_at(self.deadline, self._time_up)
            return
        self.timed_out = True
        self.writer.transport.abort()  # the read that waits then ends, with no more bytes

    def _check_time(self, error: Optional[Exception]) -> None:
        """Raise NoAnswerInTime if the read failed because the timeout aborted it."""
        if self.timed_out:
            raise NoAnswerInTime(f"no answer within {self.timeout:g} s") from error

    def close(self) -> None:
        self.awaiting = False
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


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
            raise client.DeadlineExceeded(
                f"{message} was not sent: its caller's deadline has passed")
        try:
            return await self._call(message, parameters, left)
        except CallFailed as e:
            if isinstance(e.__cause__, (NoAnswerInTime, TimeoutError)):
                host, port = self.remote_name
                raise client.DeadlineExceeded(
                    f"the server at {host}:{port} did not answer {message} within the time "
                    f"its caller had left ({left:.3g} s)") from e
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

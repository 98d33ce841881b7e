"""One keep-alive HTTP/1.1 connection of avrohttp.AsyncClient, on asyncio's streams, and
what it reads of an answer's head: the minimal HTTP client that AsyncClient's calls go
through (avrohttp.async_client says why it is its own).
"""

import asyncio
import http.client
import os
import re
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Tuple, Union

from avrohttp import client, client_rules, codec, hooks
from avrohttp.client import NoAnswerInTime
from avrohttp.requestor import Requestor

if TYPE_CHECKING:
    from avrohttp.async_client import AsyncClient

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

    def drop_if_closed_while_idle(self) -> None:
        """Close the kept-alive connection if the server closed it while it was idle (the
        loop has seen its end): nothing was sent on it, so a new one is safe for any
        message, retry or not."""
        reader = self.reader
        if reader is not None and reader.at_eof():
            self.close()

    async def transceive(self, request: bytes) -> bytes:
        """Send the call (headers and body in one write), and read its answer, in one
        coroutine: a coroutine apiece for the head and the body cost a call 0.3 µs more."""
        body = codec.frame(request)
        owner = self.owner
        request = (owner.request_heads.get(len(body)) or owner.request_head(len(body))) + body
        self.drop_if_closed_while_idle()
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
            if answer.usual and length is not None and length <= client_rules.MAX_ANSWER_BYTES:
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
        limit = client_rules.MAX_ANSWER_BYTES if answer.avro else client.NOT_AVRO_BYTES
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
        watchdog = self.watchdog
        if watchdog is None:
            assert self.loop is not None  # set when it connected
            self.watchdog = self.loop.call_at(self.deadline, self._time_up)
        elif self.timeout < self.owner.timeout and watchdog.when() > self.deadline:
            # A call with less time than the client's (its caller's time left): the timer,
            # set for an earlier call's longer timeout, would fire too late for this one.
            assert self.loop is not None
            watchdog.cancel()
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

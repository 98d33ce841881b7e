"""The asyncio host's fast path for a call: an Avro POST answered straight from uvicorn's
parser callbacks, without an ASGI task.

Through ASGI, uvicorn gives every request a task, an asyncio.Event, a scope, and a receive()
and two send() messages, each a dict, with each header checked by a regular expression; and
writes the answer's head and body in two writes, two system calls. For a call whose
handlers are plain functions, none of that buys anything: its whole body is in hand when the
parser says the request is complete, and its answer is ready as soon as respond() returns.
So CallFastPath (a base of avrohttp.serve_asyncio.HTTPProtocol) answers a POST there and
then, with the same avrohttp.answers.Rules as the ASGI application (so the same answers,
log lines and metrics) and one write. Everything else takes uvicorn's ASGI path as it is:
other methods, a chunked body, `Expect: 100-continue`, a request behind a pipelined one
still answered through ASGI, and every request of a server with `async def` handlers or an
access log.

What it saves, in CPU time per call (the process's, from /proc, over 200,000 calls from
h2load at 50 connections, three rounds in turns): 17 to 19 µs with it, 27 to 30 µs without
it, where bare uvicorn answering fixed bytes through ASGI takes 20 to 21 µs. So with every
protection on, the host does less work per call than bare uvicorn; docs/speed.md has the
throughput. tests/avrohttp/test_call_fast_path.py checks that its answers are the ASGI
application's, byte for byte.
"""

from typing import TYPE_CHECKING, List, Optional, Union

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from avrohttp import codec
from avrohttp.answers import Answer, Rules
from avrohttp.async_handlers import PendingAnswer

if TYPE_CHECKING:
    from avrohttp.serve_asyncio import Server

_AVRO_HEAD = b"content-type: avro/binary\r\ncontent-length: "
_CONNECTION_CLOSE = b"connection: close\r\n"
# A call refused before its body (413): what still comes of the body is dropped.
_DROPPED = object()


class CallFastPath(HttpToolsProtocol):
    """uvicorn's protocol, with Avro calls answered in its parser callbacks (see above).

    `rules` is set by the server: the Rules of its application, or None to take uvicorn's
    ASGI path for every request.
    """

    rules: Optional[Rules] = None
    host: "Server"  # the server's own subclass, HTTPProtocol, sets it
    # The call being read on the fast path: its body's pieces; an Answer that refuses it,
    # sent once its body is in; _DROPPED; or None (no call on the fast path).
    call: Union[None, List[bytes], Answer, object] = None
    call_keep_alive = True
    # The next answer is the connection's last, said with "Connection: close": the server is
    # stopping, or the connection is old (HTTPProtocol.retire, on_message_begin).
    retiring = False

    def on_headers_complete(self) -> None:
        rules = self.rules
        parser = self.parser
        if (rules is None or parser.get_method() != b"POST" or self.expect_100_continue
                or self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
                or parser.should_upgrade()):
            return super().on_headers_complete()
        content_type = content_length = None
        for name, value in self.headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")
        if content_length is None:  # chunked: uvicorn decodes it for the ASGI application
            return super().on_headers_complete()
        path = httptools.parse_url(self.url).path.decode("ascii")
        if "%" in path:  # as uvicorn reads the path for ASGI
            return super().on_headers_complete()
        self.call_keep_alive = parser.get_http_version() == "1.1" and parser.should_keep_alive()
        refused = rules.before_body("POST", path, content_type, content_length, self.client)
        if refused is None:
            self.call = []
        elif any(name == "Connection" for name, _ in refused.headers):  # 413: not read at all
            self.call = _DROPPED
            self.write_answer(refused)
        else:
            self.call = refused

    def on_body(self, body: bytes) -> None:
        call = self.call
        if call is None:
            super().on_body(body)
        elif call.__class__ is list:
            call.append(body)

    def on_message_complete(self) -> None:
        call = self.call
        if call is None:
            return super().on_message_complete()
        self.call = None
        if call is _DROPPED:
            return
        if call.__class__ is list:
            assert self.rules is not None  # or the call would not be on the fast path
            answer = self.rules.call(b"".join(call), self.client, self)
            if isinstance(answer, PendingAnswer):  # an async handler: never, since rules is
                raise AssertionError("the call fast path met an async handler")  # None then
            self.write_answer(answer)
        elif isinstance(call, Answer):  # refused before its body, which is now in
            self.write_answer(call)

    def body_too_slow(self, error: Exception) -> bool:
        """For the request deadline: answer a call whose body comes too slowly with 408, as
        the ASGI application would; False if no call is being read on the fast path."""
        if self.call.__class__ is not list:
            return False
        assert self.rules is not None  # or the call would not be on the fast path
        self.call = None
        self.write_answer(self.rules.too_slow(self.client, error))
        return True

    def write_answer(self, answer: Union[bytes, Answer]) -> None:
        """Write the answer in one write, as uvicorn would write it (its Date header first),
        then go on as uvicorn does after an answer: close, or wait for the next request."""
        # True, False, or None once the answer says "Connection: close" itself.
        keep_alive: Optional[bool] = self.call_keep_alive and not self.retiring
        head = [*(b"%s: %s\r\n" % header for header in self.server_state.default_headers)]
        if isinstance(answer, Answer):
            head.insert(0, STATUS_LINE[int(answer.status[:3])])
            for name, value in answer.headers:
                if name == "Connection":  # only ever "close" (Rules)
                    keep_alive = None
                head.append(b"%s: %s\r\n" % (name.lower().encode(), value.encode()))
            body = answer.body
        else:
            body = codec.frame(answer)
            head.insert(0, STATUS_LINE[200])
            head.append(b"%s%d\r\n" % (_AVRO_HEAD, len(body)))
        if keep_alive is False:  # and the answer does not say so already
            head.append(_CONNECTION_CLOSE)
        head.append(b"\r\n")
        head.append(body)
        transport = self.transport
        transport.write(b"".join(head))
        if not keep_alive:
            transport.close()
        self.on_response_complete()

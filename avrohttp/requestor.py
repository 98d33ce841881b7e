"""The client side of Avro RPC: avro.ipc's Requestor with avro 1.12.2's flaws fixed and its
waste cut. avrohttp.Client builds on it; docs/avro-ipc.md lists what it fixes.
"""

import io
from typing import Callable, Dict, Generator, Iterable, List, Optional, Tuple, Union

import avro.errors
import avro.io
import avro.ipc
import avro.protocol
import avro.schema

from avrohttp import arguments, codec, hooks
from avrohttp.context import TIMEOUT_KEY, timeout_value
from avrohttp.errors import DeclaredError, RemoteSystemError
from avrohttp.hooks import Call, CallHook
# SEND_AGAIN is imported from here too, where it was first defined.
from avrohttp.plain_call import _BOTH, _PLAIN_ANSWER_OFFSET, _PLAIN_ANSWER_START, PlainCall
from avrohttp.plain_call import SEND_AGAIN as SEND_AGAIN
from avrohttp.protocol import as_written


class Requestor(avro.ipc.Requestor):
    """avro.ipc.Requestor with the flaws of avro 1.12.2's client side fixed, in one place.

    Bug fixed: avro.ipc keeps the server's protocol in module-level dicts keyed by
    transceiver.remote_name, which HTTPTransceiver sets to the *local* socket name. A later
    connection that happens to get the same local port, to another server, would find the
    wrong protocol; and the dicts grow by one entry per connection ever made. Here they are
    kept on the instance.
    Also fixed: an Avro error is raised as avrohttp.DeclaredError (a declared error, with its
    type's name) or avrohttp.RemoteSystemError (a system error), where avro.ipc raises
    AvroRemoteException for both; a message that the server lacks raises the server's own
    system error, where avro.ipc says "Unknown remote message" without reading it; and the
    protocol may be given as its JSON text, which is sent as written (avrohttp.protocol).

    Waste cut (tests/avrohttp/test_codec.py and test_requestor.py check that the bytes are
    those of avro.ipc):
    - After the first call the handshake request never changes; it is encoded once per
      (server hash, whether to send our protocol) instead of on every call.
    - The start of each call request (empty metadata, message name) is encoded once.
    - Parameters are written by a writer made once per message (codec.encoder_for).
    - A BOTH handshake response (four zero bytes) is recognised without avro's generic
      reader, and the empty response metadata is skipped likewise.
    - Response readers (codec.reader_for) are made once per server protocol, not once per call.
    - Once the handshake is settled, a call without hooks takes a fast path (PlainCall): its
      request is its cached start and its parameters, and a plain answer is read straight
      off its bytes.
    """

    def __init__(self, local_protocol: Union[str, avro.protocol.Protocol], transceiver,
                 call_hooks: Iterable[CallHook] = ()) -> None:
        super().__init__(as_written(local_protocol), transceiver)
        # Run around each call (avrohttp.hooks); add one with self.hooks.append(hook).
        self.hooks = hooks.Hooks(call_hooks)
        self._call: Optional[Call] = None  # the call in progress, while hooks are installed
        self._handshake_requests: Dict[Tuple[bytes, bool], bytes] = {}
        self._call_heads: Dict[str, bytes] = {}
        self._request_encoders: Dict[str, Callable[[object], bytes]] = {}
        # By message: the readers of its response and of its errors (_readers).
        self._response_readers: Dict[str, Tuple[Callable[[avro.io.BinaryDecoder], object],
                                                 ErrorReader]] = {}
        # The fast path of a call once the handshake is settled: a PlainCall per message
        # (plain_call, below). Emptied whenever the handshake's state changes (the three
        # setters below).
        self._plain_calls: Dict[str, PlainCall] = {}
        self._timeout: Optional[float] = None
        self._usual_meta: dict = {}  # the metadata of every call: its timeout, if any
        self._meta = codec.EMPTY_META  # the same, encoded

    @property
    def timeout(self) -> Optional[float]:
        """The seconds sent with every call as its timeout (avrohttp.context.TIMEOUT_KEY), so
        that the server knows its deadline; None (the default) sends none. avrohttp.Client
        sets its own timeout here."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: Optional[float]) -> None:
        self._timeout = seconds
        self._usual_meta = {} if seconds is None else {TIMEOUT_KEY: timeout_value(seconds)}
        self._meta = codec.encode_metadata(self._usual_meta)
        self._call_heads = {}  # each starts with the metadata
        self._plain_calls = {}

    @property
    def remote_protocol(self) -> Optional[avro.protocol.Protocol]:
        return self._remote_protocol

    @remote_protocol.setter
    def remote_protocol(self, protocol: avro.protocol.Protocol) -> None:
        if protocol is not self._remote_protocol:
            self._response_readers = {}  # they resolve the old server protocol's schemas
            self._plain_calls = {}
        self._remote_protocol = protocol

    @property
    def remote_hash(self) -> Optional[bytes]:
        return self._remote_hash

    @remote_hash.setter
    def remote_hash(self, hash: bytes) -> None:
        if hash != self._remote_hash:
            self._plain_calls = {}
        self._remote_hash = hash

    @property
    def send_protocol(self) -> Optional[bool]:
        return self._send_protocol

    @send_protocol.setter
    def send_protocol(self, send: Optional[bool]) -> None:
        if send != self._send_protocol:
            self._plain_calls = {}
        self._send_protocol = send

    def write_handshake_request(self, encoder: avro.io.BinaryEncoder) -> None:
        if self.remote_hash is None:  # until the server says otherwise, guess it speaks ours
            self.remote_protocol = self.local_protocol
        encoder.write(self._handshake_request(self.remote_hash or self.local_protocol.md5,
                                              bool(self.send_protocol)))

    def _handshake_request(self, server_hash: bytes, send_protocol: bool) -> bytes:
        key = (server_hash, send_protocol)
        request = self._handshake_requests.get(key)
        if request is None:
            datum = {"clientHash": self.local_protocol.md5, "serverHash": server_hash}
            if send_protocol:
                datum["clientProtocol"] = str(self.local_protocol)
            request = codec.encoder_for(avro.ipc.HANDSHAKE_REQUEST_SCHEMA)(datum)
            self._handshake_requests[key] = request
        return request

    def request(self, message_name: str, request_datum: object,
                timeout: Optional[float] = None) -> object:
        """Call the message through the transceiver and return its answer, with the hooks
        run around it if any are installed. timeout: the seconds to send as this call's
        timeout, in place of self.timeout (a call made with less time than that)."""
        plain = self.plain_call(message_name) if timeout is None else None
        if plain is not None:
            answer = plain.answer(self.transceiver.transceive(plain.request(request_datum)))
            if answer is not SEND_AGAIN:
                return answer
        return run_exchange(self.exchange(message_name, request_datum, timeout),
                            self.transceiver.transceive)

    def plain_call(self, message_name: str) -> Optional[PlainCall]:
        """The PlainCall of this message, or None for a call to make through exchange(): while
        hooks are installed, before the handshake is settled, and for a message that the
        server's protocol lacks. AvroException if our protocol lacks it."""
        if self.hooks.hooks:
            return None
        plain = self._plain_calls.get(message_name)
        if plain is None and self._send_protocol is False:
            plain = self._plain_call(message_name)
        return plain

    def exchange(self, message_name: str, request_datum: object,
                 timeout: Optional[float] = None,
                 call: Optional[Call] = None) -> Generator[bytes, bytes, object]:
        """The call without its I/O: yields each request to send, is sent the answer to it,
        and returns the call's answer (or raises its error), with the hooks run around it.

        One generator serves both clients: request() drives it with a blocking transceiver
        (avrohttp.Client), avrohttp.AsyncClient with an awaited one. A transport failure is
        thrown into it, so that the hooks see the call fail. timeout: as for request().
        call: one attempt of a call whose hooks run around all its attempts (a client of
        several endpoints: avrohttp.endpoints): no hooks run here; the attempt sends
        call.request_meta, and adds its sizes and response metadata to the call.
        """
        if call is not None:
            return self._attempt(call, message_name, request_datum)
        if not self.hooks.hooks:
            meta = None if timeout is None else {TIMEOUT_KEY: timeout_value(timeout)}
            return self._exchange(message_name, request_datum, meta)
        return self._exchange_with_hooks(message_name, request_datum, timeout)

    def _exchange_with_hooks(self, message_name: str, request_datum: object,
                             timeout: Optional[float]) -> Generator[bytes, bytes, object]:
        call = self._call = Call(message_name)
        if timeout is None:
            timeout = self._timeout
        if timeout is not None:  # the hooks see it, and may add to it
            call.request_meta[TIMEOUT_KEY] = timeout_value(timeout)
        try:
            self.hooks.before(call)  # which may refuse the call (CallHook)
            response = yield from self._exchange(message_name, request_datum)
        except BaseException as error:
            call.outcome = hooks.client_outcome(error)
            raise
        else:
            call.outcome = hooks.ANSWERED
            return response
        finally:
            self._call = None
            self.hooks.after(call)

    def _attempt(self, call: Call, message_name: str,
                 request_datum: object) -> Generator[bytes, bytes, object]:
        self._call = call
        try:
            return (yield from self._exchange(message_name, request_datum))
        finally:
            self._call = None

    def _exchange(self, message_name: str, request_datum: object,
                  meta: Optional[dict] = None) -> Generator[bytes, bytes, object]:
        """avro.ipc's request and issue_request, with the transport left to the caller.
        meta: this call's metadata, in place of the usual (self._meta); with hooks, it is
        the call's request_meta."""
        call = self._call
        if call is not None:  # the hooks' metadata, unless it is the usual
            meta = call.request_meta if call.request_meta != self._usual_meta else None
        plain = self._plain_calls.get(message_name)
        if plain is None and self._send_protocol is False:
            plain = self._plain_call(message_name)
        if plain is None or meta is not None:
            plain = None
            call_request = self._call_request(message_name, request_datum, meta)
        else:
            call_request = plain.request(request_datum)
        while True:
            if call is not None:
                call.request_bytes += len(call_request)
            answer = yield call_request
            if plain is not None and answer.startswith(_PLAIN_ANSWER_START):
                if call is not None:
                    call.response_bytes += len(answer)
                    call.response_meta = {}
                return plain.read_response(answer, _PLAIN_ANSWER_OFFSET)
            response = self.read_answer(message_name, answer)
            if response is not SEND_AGAIN:
                return response
            # NONE: the server did not know our protocol. The same call again, with it.
            plain = None
            call_request = self._call_request(message_name, request_datum, meta)

    def read_answer(self, message_name: str, answer: bytes) -> object:
        """The call's answer (or its error, raised) read from the server's answer as avro.ipc
        reads it, or SEND_AGAIN if the server answered NONE."""
        if self._call is not None:
            self._call.response_bytes += len(answer)
        decoder = avro.io.BinaryDecoder(io.BytesIO(answer))
        if self.read_handshake_response(decoder):
            return self.read_call_response(message_name, decoder)
        return SEND_AGAIN

    def _call_request(self, message_name: str, request_datum: object,
                      meta: Optional[dict] = None) -> bytes:
        buffer = io.BytesIO()
        encoder = avro.io.BinaryEncoder(buffer)
        self.write_handshake_request(encoder)
        self.write_call_request(message_name, request_datum, encoder, meta)
        return buffer.getvalue()

    def _plain_call(self, message_name: str) -> Optional[PlainCall]:
        """The PlainCall of this message (kept in _plain_calls), or None if the message is
        not one that both protocols have. Made only once the handshake is settled
        (send_protocol is False), and while the server's protocol is the one that
        write_handshake_request would take."""
        if self.remote_hash is None and self.remote_protocol is not self.local_protocol:
            return None
        # Set, by now: to ours, or to the one the server sent with the hash it answered with.
        assert self.remote_protocol is not None
        head = self._call_head(message_name)
        remote = (self.remote_protocol.messages or {}).get(message_name)
        if remote is None:
            return None
        plain = PlainCall(
            self, message_name,
            self._handshake_request(self.remote_hash or self.local_protocol.md5, False) + head,
            self._request_encoders[message_name],
            codec.reader_at_for(remote.response,
                                self.local_protocol.messages[message_name].response))
        self._plain_calls[message_name] = plain
        return plain

    def write_call_request(self, message_name: str, request_datum: object,
                           encoder: avro.io.BinaryEncoder, meta: Optional[dict] = None) -> None:
        """The call request: `meta` (by default, the usual metadata: self._meta), the
        message name, the parameters (avrohttp.BadArguments if they do not fit)."""
        head = self._call_head(message_name)
        if meta is not None:  # this call's own, in place of the cached head's
            head = codec.encode_metadata(meta) + head[len(self._meta):]
        try:
            parameters = self._request_encoders[message_name](request_datum)
        except Exception as error:
            arguments.raise_bad_arguments(self.local_protocol.messages[message_name],
                                          request_datum, error)
            raise
        encoder.write(head + parameters)

    def _call_head(self, message_name: str) -> bytes:
        """The start of a call of this message (the usual metadata, its name), encoded once,
        with the encoder of its parameters; AvroException if our protocol lacks it."""
        head = self._call_heads.get(message_name)
        if head is None:
            message = self.local_protocol.messages.get(message_name)
            if message is None:
                raise avro.errors.AvroException(f"Unknown message: {message_name}")
            buffer = io.BytesIO(self._meta)
            buffer.seek(0, io.SEEK_END)
            avro.io.BinaryEncoder(buffer).write_utf8(message.name)
            head = self._call_heads[message_name] = buffer.getvalue()
            self._request_encoders[message_name] = codec.encoder_for(message.request)
        return head

    def read_handshake_response(self, decoder: avro.io.BinaryDecoder) -> bool:
        reader = decoder.reader
        start = reader.tell()
        if reader.read(len(_BOTH)) == _BOTH:
            self.send_protocol = False
            return True
        reader.seek(start)
        return super().read_handshake_response(decoder)

    def read_call_response(self, message_name: str, decoder: avro.io.BinaryDecoder) -> object:
        readers = self._readers(message_name)
        if readers is None:
            return self._read_unknown_message_answer(message_name, decoder)
        if self._call is None:
            codec.skip_metadata(decoder)
        else:
            self._call.response_meta = codec.read_metadata(decoder)
        response_reader, error_reader = readers
        if decoder.read_boolean():
            raise error_reader(decoder)
        return response_reader(decoder)

    def _readers(self, message_name: str) -> Optional[tuple]:
        """The readers of this message's response and errors, made once per server protocol;
        None if the server's protocol lacks the message."""
        readers = self._response_readers.get(message_name)
        if readers is None:
            assert self.remote_protocol is not None  # write_handshake_request set it, at least
            remote = (self.remote_protocol.messages or {}).get(message_name)
            if remote is None:
                return None
            local = self.local_protocol.messages[message_name]
            readers = self._response_readers[message_name] = (
                codec.reader_for(remote.response, local.response),
                error_reader_for(remote.errors, local.errors))
        return readers

    def _read_unknown_message_answer(self, message_name: str,
                                     decoder: avro.io.BinaryDecoder) -> object:
        """The server's protocol lacks this message, so its answer is a system error:
        raise it, with the server's words."""
        codec.skip_metadata(decoder)
        if decoder.read_boolean() and decoder.read_long() == 0:  # the string branch
            raise RemoteSystemError(decoder.read_utf8())
        raise avro.errors.AvroException(
            f"the server answered {message_name}, which its protocol lacks, with no error")


# Reads an error of a message's errors union, and returns it as an exception.
ErrorReader = Callable[[avro.io.BinaryDecoder], avro.errors.AvroRemoteException]


def error_reader_for(writers_errors: avro.schema.UnionSchema,
                     readers_errors: avro.schema.UnionSchema) -> ErrorReader:
    """A function that reads an error of the server's errors union and returns it as an
    exception: RemoteSystemError for the string branch, DeclaredError for a declared one.

    A declared branch is read as the type of the same name in our union, resolved like any
    other schema; one that our protocol lacks is read as the server wrote it.
    """
    # Each declared branch (1 on; branch 0 is the system errors' string): its name and reader.
    declared: List[Tuple[str, Callable[[avro.io.BinaryDecoder], object]]] = []
    for schema in writers_errors.schemas[1:]:
        ours = [mine for mine in readers_errors.schemas[1:]
                if getattr(mine, "fullname", None) == getattr(schema, "fullname", None)]
        declared.append((getattr(schema, "name", schema.type),
                         codec.reader_for(schema, ours[0] if ours else schema)))

    def read_error(decoder: avro.io.BinaryDecoder) -> avro.errors.AvroRemoteException:
        index = decoder.read_long()
        if index == 0:
            return RemoteSystemError(decoder.read_utf8())
        if not 0 < index <= len(declared):
            raise avro.errors.AvroException(f"error branch {index} is not in the errors union")
        name, read = declared[index - 1]
        return DeclaredError(name, read(decoder))
    return read_error


def run_exchange(exchange: Generator[bytes, bytes, object],
                 transceive: Callable[[bytes], bytes]) -> object:
    """Drive a Requestor.exchange with a blocking transceive: the call's answer."""
    request = next(exchange)
    while True:
        try:
            answer = transceive(request)
        except BaseException as error:
            exchange.throw(error)  # which raises it again, once the hooks have seen it
        try:
            request = exchange.send(answer)
        except StopIteration as done:
            return done.value

"""The server side of Avro RPC: avro.ipc's Responder with avro 1.12.2's flaws fixed, its waste
cut, and each message dispatched to a `handle_<name>` method.

Subclass Responder with your protocol and one handle_<name>(**parameters) per message; hand it
to avrohttp.make_application (WSGI) or avrohttp.cli.main (the whole server). docs/avro-ipc.md
lists each flaw of avro.ipc and what fixes it here; tests/avrohttp/test_responder.py and
test_codec.py fail without the fixes.
"""

import hashlib
import io
import logging
import time
import types
from typing import Any, Callable, Dict, FrozenSet, Iterable, Optional, Tuple, Union, cast

import avro.errors
import avro.io
import avro.ipc
import avro.protocol

from avrohttp import codec, hooks
from avrohttp.async_handlers import PendingAnswer
# BadRequest and MAX_ERROR_CHARS are still imported from here, as before they moved.
from avrohttp.call_responses import MAX_ERROR_CHARS as MAX_ERROR_CHARS
from avrohttp.call_responses import BadRequest as BadRequest
from avrohttp.call_responses import CallResponses, _encode_null
from avrohttp.context import CALL, _current, timeout_of
from avrohttp.context import holder as context_holder
from avrohttp.errors import HandlersMismatch
from avrohttp.hooked_responses import HookedResponses
from avrohttp.hooks import Call, CallHook
from avrohttp.protocol import as_written

# Client protocols remembered by hash; the least recently used is forgotten first.
MAX_CACHED_PROTOCOLS = 256
# A client protocol longer than this is refused unparsed. AvroEcho's is about 400 characters,
# so 16 KiB leaves room for a client with many more types. The limit matters because a parsed
# protocol takes up to about 40 bytes of memory per character of JSON (measured with
# tracemalloc on avro 1.12.2, worst case: many small messages or fields): a full cache of
# MAX_CACHED_PROTOCOLS protocols of this size could hold about 170 MB, and one of 64 KiB
# about 700 MB. Parsing one this size also takes a few milliseconds of CPU per call.
MAX_PROTOCOL_CHARS = 16 * 1024
# Elements that take no bytes on the wire (an array of nulls, or of empty records) that one
# datum may hold. avro.io allows 10,000,000, and counting them is a Python loop that no
# green thread can interrupt: a client that declares such an array in its own protocol can
# make a few hundred bytes cost the whole server over a second. 100,000 take about 15 ms.
MAX_ZERO_BYTE_ITEMS = 100_000

log = logging.getLogger(__name__)


def limit_zero_byte_items(limit: int = MAX_ZERO_BYTE_ITEMS) -> None:
    """Lower avro.io's cap on zero-byte items per collection, for the whole process.

    avro has no per-reader setting, so this changes a module-level default of avro.io:
    avrohttp.make_application calls it when it makes the application (the server's start-up),
    never on import. AVRO_MAX_COLLECTION_ITEMS, if set in the environment, still wins (and
    also caps every other collection, see avro.io).
    """
    if avro.io.DEFAULT_MAX_COLLECTION_ITEMS > limit:
        avro.io.DEFAULT_MAX_COLLECTION_ITEMS = limit
        log.debug("avro.io: at most %d zero-byte items per collection", limit)

# What a malformed body can make avro.io raise while it decodes: its own errors,
# UnicodeDecodeError (a ValueError) for a string that is not UTF-8, and RecursionError for a
# datum of a recursive client type nested deeper than Python's stack (avro.io recurses).
DECODING_ERRORS = (avro.errors.AvroException, ValueError, RecursionError)

# On the wire, a handshake request whose clientProtocol and meta are both null is exactly
# clientHash (16 bytes), 0x00 (the union's null branch), serverHash (16 bytes), 0x00.
# Every call after the first one looks like this, on both sides.
_HASH = 16
_SHORT_HANDSHAKE = 2 * _HASH + 2

# Reads a message's parameters from the call request (codec.reader_for).
_Reader = Callable[[avro.io.BinaryDecoder], Any]  # a request's reader gives a dict
# What the first bytes of a call mean (Responder._remember_head): the message, the reader of
# its parameters, the call metadata, and the caller's timeout.
_Head = Tuple[avro.protocol.Message, _Reader, dict, Optional[float]]


class Responder(CallResponses, HookedResponses, avro.ipc.Responder):
    """avro.ipc.Responder with the flaws of avro 1.12.2's server side fixed, in one place, and
    each message `name` answered by the method `handle_<name>`, called with its parameters.

    Bugs fixed:
    - respond() writes a system error raised after the handshake into a buffer that it then
      throws away, so the client gets a bare handshake and a decoding error. Here the
      handshake and the call response are built separately and always sent together.
    - An exception in a handler goes back as its str(), which may leak internals. Here the
      client gets a short message and the traceback goes to the log.
    - A declared error goes back as the str() of its datum, in the errors union's string
      branch, so no client ever gets the error record. Here it goes back in its own branch
      (_declared_error).
    - The handshake sends str(protocol), which avro rebuilds without docs or "one-way", and
      hashes that. Here the protocol may be given as its JSON text, which is sent and hashed
      as written (avrohttp.protocol).
    - The empty message name is the spec's ping, which avro answers with "Unknown message".
    - The client-protocol cache is an unbounded dict, keyed by whatever hash the client
      sends, so a client can grow it without limit or plant a wrong protocol under another
      client's hash. Here it is bounded, and a protocol is cached only under its own MD5.

    Waste cut (tests/avrohttp/test_codec.py checks that the bytes are those of avro.ipc):
    - The handshake response is one of three byte strings that never change; they are
      encoded once, in __init__, instead of on every call.
    - A handshake request without a protocol is read by its fixed layout (_SHORT_HANDSHAKE)
      instead of by avro's generic reader.
    - The first bytes of a call (handshake, metadata, message name) that were seen before
      are looked up instead of being read again (_remember_head).
    - Readers for each client message and encoders for each of our messages
      (codec.reader_for and encoder_for) are made once and kept, readers with the client
      protocol they belong to, instead of once per call.
    """

    def __init__(self, local_protocol: Union[str, avro.protocol.Protocol],
                 max_cached_protocols: int = MAX_CACHED_PROTOCOLS,
                 call_hooks: Iterable[CallHook] = ()) -> None:
        """local_protocol: the protocol's JSON text (best: it is sent as written, so that
        other implementations see its one-way messages), or a protocol avro has parsed.
        call_hooks: avrohttp.hooks.CallHook objects run around each call."""
        local_protocol = as_written(local_protocol)
        one_way: FrozenSet[str] = getattr(local_protocol, "one_way", frozenset())
        self.max_cached_protocols = max_cached_protocols
        # Run around each call (avrohttp.hooks); add one with self.hooks.append(hook).
        self.hooks = hooks.Hooks(call_hooks)
        self._hook_list = self.hooks.hooks  # the same list: one lookup per call, not two
        # For each hash in the protocol cache (and always our own): the request readers of
        # the protocol cached under it, by message name. Kept and forgotten with the protocol.
        self._request_readers: Dict[bytes, Dict[str, _Reader]] = {}
        # The first bytes of calls seen before (handshake, metadata, message name), and what
        # they mean; _head_lengths holds their lengths, one per message name length.
        self._call_heads: Dict[bytes, _Head] = {}
        self._head_lengths: Tuple[int, ...] = ()
        super().__init__(local_protocol)
        self._handshake_responses = {
            match: self._encode_handshake_response(match) for match in ("BOTH", "CLIENT", "NONE")}
        # Over HTTP a one-way message is answered like any other (every request has a
        # response; Java and avsc do the same), with null whatever its handler returns.
        self._response_encoders = {
            name: (_encode_null if name in one_way else codec.encoder_for(message.response),
                   codec.encoder_for(message.errors))
            for name, message in (local_protocol.messages or {}).items()}
        self._error_encoders = {}  # (message name, branch index): encoder, made on first use
        if type(self).invoke is Responder.invoke:  # a subclass that overrides it finds its own
            check_handlers(self)

    def _encode_handshake_response(self, match: str) -> bytes:
        response = {"match": match}
        if match != "BOTH":
            response["serverProtocol"] = str(self.local_protocol)
            response["serverHash"] = self.local_hash
        return codec.encoder_for(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA)(response)

    # A dict keeps insertion order, so re-inserting on every hit makes it an LRU cache.
    def get_protocol_cache(self, hash: bytes) -> Optional[avro.protocol.Protocol]:
        if hash == self.local_hash:
            return self.local_protocol
        protocol = self.protocol_cache.pop(hash, None)
        if protocol is not None:
            self.protocol_cache[hash] = protocol
        return protocol

    def set_protocol_cache(self, hash: bytes, protocol: avro.protocol.Protocol) -> None:
        self.protocol_cache.pop(hash, None)
        self.protocol_cache[hash] = protocol
        self._request_readers[hash] = {}
        while len(self.protocol_cache) > self.max_cached_protocols:
            forgotten = next(iter(self.protocol_cache))
            # pop, not del: two threads (of a threaded WSGI server) may forget the same one.
            self.protocol_cache.pop(forgotten, None)
            if forgotten != self.local_hash:  # get_protocol_cache always knows our own
                self._request_readers.pop(forgotten, None)

    def respond(self, call_request: bytes, call: Optional[Call] = None,
                origin: object = None) -> Union[bytes, PendingAnswer]:
        """Answer one call: the handshake response, then the call response (if any).

        Raises BadRequest when the body does not even start with a handshake request. A call
        to an `async def` handler is answered with a PendingAnswer instead of bytes.
        `call` is for _respond_with_hooks: with no hook installed it stays None, and the
        outcome of the call is not even noted. `origin` is what the call's context reads its
        HTTP headers and peer from (avrohttp.origins): the hosts give it.
        """
        if call is None and self._hook_list:
            return self._respond_with_hooks(call_request, origin)
        decoder = codec.Decoder(io.BytesIO(call_request))
        # Saves: reading the handshake, the metadata and the message name, for a call that
        # starts with the same bytes as an earlier one (see _remember_head).
        for length in self._head_lengths:
            head = self._call_heads.get(call_request[:length])
            if head is not None:
                decoder.reader.seek(length)
                return self._handshake_responses["BOTH"] + self._call(*head, decoder, call,
                                                                      origin)

        if (len(call_request) >= _SHORT_HANDSHAKE and call_request[_HASH] == 0
                and call_request[_SHORT_HANDSHAKE - 1] == 0):
            handshake = {"clientHash": call_request[:_HASH], "clientProtocol": None,
                         "serverHash": call_request[_HASH + 1:_SHORT_HANDSHAKE - 1]}
            decoder.reader.seek(_SHORT_HANDSHAKE)
        else:
            try:  # a record: avro reads it as a dict
                handshake = cast(dict, avro.ipc.HANDSHAKE_RESPONDER_READER.read(decoder))
            except DECODING_ERRORS as e:
                raise BadRequest("body is not an Avro handshake request") from e
        try:
            client_protocol = self._client_protocol(handshake)
        except Exception as e:  # parsing untrusted JSON can fail in many ways
            # Answering NONE would make the client resend the same protocol (avsc does so
            # forever). Say the protocol was received, and why it cannot be used.
            if call is not None:
                call.outcome = hooks.SYSTEM_ERROR
            return (self._handshake_response(handshake, client_known=True)
                    + self._system_error(f"Invalid client protocol: {e}"))
        if client_protocol is None:
            # NONE: the client must resend with its protocol; no call response follows.
            if call is not None:
                call.outcome = hooks.HANDSHAKE
            return self._handshake_response(handshake, client_known=False)
        response = self._handshake_response(handshake, client_known=True)
        return response + self._call_response(call_request, handshake, response, client_protocol,
                                              decoder, call, origin)

    def _call_response(self, call_request: bytes, handshake: dict, handshake_response: bytes,
                       client_protocol: avro.protocol.Protocol,
                       decoder: avro.io.BinaryDecoder, call: Optional[Call],
                       origin: object) -> Union[bytes, PendingAnswer]:
        try:
            meta = codec.read_metadata(decoder)
            name = decoder.read_utf8()
        except DECODING_ERRORS as e:
            if call is not None:
                call.outcome = hooks.SYSTEM_ERROR
            return self._system_error(f"Invalid call request: {e}")
        if call is not None:
            call.message = name
            call.request_meta = meta
        if name == "":
            if call is not None:
                call.outcome = hooks.PING
            return b""  # a ping: the handshake alone is the answer
        local_message = self.local_protocol.messages.get(name)
        # avro parses a protocol with no messages (or "messages": {}) to messages=None.
        client_messages = client_protocol.messages or {}
        if name not in client_messages or local_message is None:
            if call is not None:
                call.outcome = hooks.UNKNOWN_MESSAGE
            return self._system_error(f"Unknown message: {name}")
        readers = self._request_readers.get(handshake["clientHash"])
        reader = readers.get(name) if readers is not None else None
        if reader is None:
            reader = codec.reader_for(client_messages[name].request, local_message.request)
            if readers is not None:  # the client's protocol is cached: keep its readers too
                readers[name] = reader
        timeout = timeout_of(meta)
        if (readers is not None and handshake["clientProtocol"] is None
                and handshake.get("meta") is None
                and handshake_response == self._handshake_responses["BOTH"]
                and (not meta or (len(meta) == 1 and timeout is not None))):
            head = call_request[:decoder.reader.tell()]
            self._remember_head(head, (local_message, reader, meta, timeout))
        return self._call(local_message, reader, meta, timeout, decoder, call, origin)

    def _remember_head(self, head: bytes, call: _Head) -> None:
        """Remember what a call's first bytes mean: a client whose protocol is cached, that
        guessed our hash, sent no metadata but a timeout (avrohttp.context), and called this
        message with this reader. A client whose timeouts vary (one calling from inside a
        handler, with its caller's time left) fills the cache with heads that are seldom seen
        again; so it is emptied when full, and each new head costs one dict entry."""
        if len(self._call_heads) >= self.max_cached_protocols * len(self._response_encoders):
            self._call_heads.clear()  # only a cache: what it forgets is read again
            self._head_lengths = ()
        self._call_heads[head] = call
        if len(head) not in self._head_lengths:
            self._head_lengths += (len(head),)

    def _client_protocol(self, handshake: dict) -> Optional[avro.protocol.Protocol]:
        client_hash = handshake["clientHash"]
        protocol = self.get_protocol_cache(client_hash)
        text = handshake.get("clientProtocol")
        if protocol is None and text is not None:
            if len(text) > MAX_PROTOCOL_CHARS:
                raise avro.errors.ProtocolParseException(
                    f"longer than {MAX_PROTOCOL_CHARS} characters")
            protocol = avro.protocol.parse(text)
            if hashlib.md5(text.encode()).digest() == client_hash:
                self.set_protocol_cache(client_hash, protocol)
        return protocol

    def _handshake_response(self, handshake: dict, client_known: bool) -> bytes:
        if not client_known:
            return self._handshake_responses["NONE"]
        if handshake["serverHash"] == self.local_hash:
            return self._handshake_responses["BOTH"]
        return self._handshake_responses["CLIENT"]

    def ready(self) -> Optional[str]:
        """Whether this service should get calls now, for GET /health/ready: None if it
        should, else the reason it should not ("the database is unreachable"). Override it to
        check what the service needs; it runs on each probe, on the server's own thread or
        loop, so it must be quick (check a flag that other work keeps up to date)."""
        return None

    def invoke(self, message: avro.protocol.Message, request: dict) -> object:
        """Call handle_<message name>(**parameters) and return its answer.

        A handler raises avrohttp.DeclaredError(name, datum) (or, as with avro.ipc,
        avro.errors.AvroRemoteException(datum)) to answer with one of the message's declared
        errors, or AvroRemoteException("words") to answer with a system error. Any other
        exception is a bug, logged here, and the caller gets "Internal error in <name>".
        """
        handler = getattr(self, f"handle_{message.name}", None)
        if handler is None:
            raise avro.errors.AvroRemoteException(f"Not implemented: {message.name}")
        return handler(**request)

    def _call(self, local_message: avro.protocol.Message, reader: _Reader, meta: dict,
              timeout: Optional[float], decoder: avro.io.BinaryDecoder,
              call: Optional[Call] = None, origin: object = None) -> Union[bytes, PendingAnswer]:
        """The call response: read the parameters, invoke the handler, write its answer.

        meta: the call metadata, never changed here (it may be a cached head's); timeout:
        the seconds the caller gave (avrohttp.context), or None. While the hooks' before()
        and the handler run, avrohttp.current_call() finds this call.
        """
        name = local_message.name
        if call is not None:
            call.message = name
            call.request_meta = dict(meta)  # its own: a hook may change it
        try:
            request: dict = reader(decoder)  # the parameters: a record, read as a dict
        except DECODING_ERRORS as e:
            if call is not None:
                call.outcome = hooks.SYSTEM_ERROR
            return self._system_error(f"Invalid parameters for {name}: {e}")
        deadline = None
        if timeout is not None:
            if timeout <= 0:  # the caller has given up already: do not start it
                if call is not None:
                    call.outcome = hooks.DEADLINE_EXCEEDED
                return self._system_error(f"Deadline exceeded: {name} was not started, as its "
                                          "caller's time had run out")
            deadline = time.monotonic() + timeout
        if call is not None:
            call.deadline = deadline
        slot: list = [call, name, meta, origin, deadline]  # avrohttp.context's
        here = _current.get() or context_holder()
        previous, here.slot = here.slot, slot
        try:
            if call is not None:
                self.hooks.before(call)  # which may refuse the call (CallHook)
            response = self.invoke(local_message, request)
            if response.__class__ is types.CoroutineType:  # async def: see PendingAnswer
                return PendingAnswer(self, local_message, response, call, slot)
            answer = self._call_result(self._response_encoders[name][0], response, False)
        except Exception as e:
            answer = self._failed(local_message, e, call)
        finally:
            here.slot = previous
        made = slot[CALL]  # a context the handler asked for, without hooks: its response_meta
        if call is None and made is not None and made.response_meta:
            answer = codec.with_metadata(answer, made.response_meta)
        return answer


def check_handlers(responder: Responder) -> None:
    """Raise HandlersMismatch unless the responder has a handle_<name> for each message of
    its protocol, and no handle_ method for a message it lacks (a typo)."""
    messages = set(responder.local_protocol.messages or {})
    handlers = {name[len("handle_"):] for name in dir(type(responder))
                if name.startswith("handle_") and callable(getattr(responder, name))}
    problems = [f"no handle_{name} for the message {name}"
                for name in sorted(messages - handlers)]
    problems += [f"handle_{name} answers no message of the protocol"
                 for name in sorted(handlers - messages)]
    if problems:
        raise HandlersMismatch(
            f"{type(responder).__name__} does not fit the protocol "
            f"{responder.local_protocol.name}: {'; '.join(problems)} (its messages: "
            f"{', '.join(sorted(messages)) or 'none'})")

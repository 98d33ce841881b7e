"""Fixes for the flaws of avro.ipc (avro 1.12.2) that this example runs into, in one place.

Two kinds of flaw. Bugs: on the server, a lost system error, leaked handler errors, no ping,
and an unbounded protocol cache that a client can poison; on the client, the server's
protocol cached under the local socket name. Waste: on both sides avro.ipc rebuilds, re-checks
and re-encodes the same things on every call, which costs more than eventlet's whole HTTP
round trip; the pieces that do that work for less are in avro_speed.py. Each class says what
it fixes or saves, and why; the tests in tests/test_app.py, tests/test_end_to_end.py and
tests/test_fast_path.py would fail without them.
"""

import hashlib
import io
import logging
from typing import Callable, Optional

import avro.errors
import avro.io
import avro.ipc
import avro.protocol

import avro_speed

# Client protocols remembered by hash; the least recently used is forgotten first.
MAX_CACHED_PROTOCOLS = 256
# A client protocol longer than this is refused unparsed. AvroEcho's is about 400 characters,
# so 16 KiB leaves room for a client with many more types. The limit matters because a parsed
# protocol takes up to about 40 bytes of memory per character of JSON (measured with
# tracemalloc on avro 1.12.2, worst case: many small messages or fields): a full cache of
# MAX_CACHED_PROTOCOLS protocols of this size could hold about 170 MB, and one of 64 KiB
# about 700 MB. Parsing one this size also takes a few milliseconds of CPU per call.
MAX_PROTOCOL_CHARS = 16 * 1024
# System errors quote the client's input (a message name, a protocol); keep them short.
MAX_ERROR_CHARS = 300
# Elements that take no bytes on the wire (an array of nulls, or of empty records) that one
# datum may hold. avro.io allows 10,000,000, and counting them is a Python loop that no
# green thread can interrupt: a client that declares such an array in its own protocol can
# make a few hundred bytes cost the whole server over a second. 100,000 take about 15 ms.
# This sets avro.io's default for the whole process; AVRO_MAX_COLLECTION_ITEMS, if set in
# the environment, still wins (and also caps every other collection, see avro.io).
MAX_ZERO_BYTE_ITEMS = 100_000
avro.io.DEFAULT_MAX_COLLECTION_ITEMS = MAX_ZERO_BYTE_ITEMS

log = logging.getLogger(__name__)

# What a malformed body can make avro.io raise while it decodes: its own errors,
# UnicodeDecodeError (a ValueError) for a string that is not UTF-8, and RecursionError for a
# datum of a recursive client type nested deeper than Python's stack (avro.io recurses).
DECODING_ERRORS = (avro.errors.AvroException, ValueError, RecursionError)

# On the wire, a handshake request whose clientProtocol and meta are both null is exactly
# clientHash (16 bytes), 0x00 (the union's null branch), serverHash (16 bytes), 0x00.
# Every call after the first one looks like this, on both sides.
_HASH = 16
_SHORT_HANDSHAKE = 2 * _HASH + 2
# The error flag of a call response.
_FALSE, _TRUE = b"\x00", b"\x01"


class BadRequest(Exception):
    """The body is not an Avro call at all, so there is no Avro way to answer: HTTP 400."""


class FixedResponder(avro.ipc.Responder):
    """avro.ipc.Responder with the flaws of avro 1.12.2's server side fixed, in one place.

    Bugs fixed:
    - respond() writes a system error raised after the handshake into a buffer that it then
      throws away, so the client gets a bare handshake and a decoding error. Here the
      handshake and the call response are built separately and always sent together.
    - An exception in a handler goes back as its str(), which may leak internals. Here the
      client gets a short message and the traceback goes to the log.
    - The empty message name is the spec's ping, which avro answers with "Unknown message".
    - The client-protocol cache is an unbounded dict, keyed by whatever hash the client
      sends, so a client can grow it without limit or plant a wrong protocol under another
      client's hash. Here it is bounded, and a protocol is cached only under its own MD5.

    Waste cut (tests/test_fast_path.py checks that the bytes are those of avro.ipc):
    - The handshake response is one of three byte strings that never change; they are
      encoded once, in __init__, instead of on every call.
    - A handshake request without a protocol is read by its fixed layout (_SHORT_HANDSHAKE)
      instead of by avro's generic reader.
    - The first bytes of a call (handshake, metadata, message name) that were seen before
      are looked up instead of being read again (_remember_head).
    - Readers for each client message and encoders for each of our messages
      (avro_speed.reader_for and encoder_for) are made once and kept, readers with the client
      protocol they belong to, instead of once per call.
    """

    def __init__(self, local_protocol: avro.protocol.Protocol,
                 max_cached_protocols: int = MAX_CACHED_PROTOCOLS) -> None:
        self.max_cached_protocols = max_cached_protocols
        # For each hash in the protocol cache (and always our own): the request readers of
        # the protocol cached under it, by message name. Kept and forgotten with the protocol.
        self._request_readers = {}
        # The first bytes of calls seen before (handshake, metadata, message name), and what
        # they mean; _head_lengths holds their lengths, one per message name length.
        self._call_heads = {}
        self._head_lengths = ()
        super().__init__(local_protocol)
        self._handshake_responses = {
            match: self._encode_handshake_response(match) for match in ("BOTH", "CLIENT", "NONE")}
        self._response_encoders = {
            name: (avro_speed.encoder_for(message.response), avro_speed.encoder_for(message.errors))
            for name, message in local_protocol.messages.items()}

    def _encode_handshake_response(self, match: str) -> bytes:
        response = {"match": match}
        if match != "BOTH":
            response["serverProtocol"] = str(self.local_protocol)
            response["serverHash"] = self.local_hash
        return avro_speed.encoder_for(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA)(response)

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
            del self.protocol_cache[forgotten]
            if forgotten != self.local_hash:  # get_protocol_cache always knows our own
                del self._request_readers[forgotten]

    def respond(self, call_request: bytes) -> bytes:
        """Answer one call: the handshake response, then the call response (if any).

        Raises BadRequest when the body does not even start with a handshake request.
        """
        decoder = avro_speed.Decoder(io.BytesIO(call_request))
        # Saves: reading the handshake, the metadata and the message name, for a call that
        # starts with the same bytes as an earlier one (see _remember_head).
        for length in self._head_lengths:
            call = self._call_heads.get(call_request[:length])
            if call is not None:
                decoder.reader.seek(length)
                return self._handshake_responses["BOTH"] + self._call(*call, decoder)

        if (len(call_request) >= _SHORT_HANDSHAKE and call_request[_HASH] == 0
                and call_request[_SHORT_HANDSHAKE - 1] == 0):
            handshake = {"clientHash": call_request[:_HASH], "clientProtocol": None,
                         "serverHash": call_request[_HASH + 1:_SHORT_HANDSHAKE - 1]}
            decoder.reader.seek(_SHORT_HANDSHAKE)
        else:
            try:
                handshake = avro.ipc.HANDSHAKE_RESPONDER_READER.read(decoder)
            except DECODING_ERRORS as e:
                raise BadRequest("body is not an Avro handshake request") from e
        try:
            client_protocol = self._client_protocol(handshake)
        except Exception as e:  # parsing untrusted JSON can fail in many ways
            # Answering NONE would make the client resend the same protocol (avsc does so
            # forever). Say the protocol was received, and why it cannot be used.
            return (self._handshake_response(handshake, client_known=True)
                    + self._system_error(f"Invalid client protocol: {e}"))
        if client_protocol is None:
            # NONE: the client must resend with its protocol; no call response follows.
            return self._handshake_response(handshake, client_known=False)
        response = self._handshake_response(handshake, client_known=True)
        return response + self._call_response(handshake, response, client_protocol, decoder)

    def _call_response(self, handshake: dict, handshake_response: bytes,
                       client_protocol: avro.protocol.Protocol,
                       decoder: avro.io.BinaryDecoder) -> bytes:
        try:
            no_meta = avro_speed.skip_metadata(decoder)
            name = decoder.read_utf8()
        except DECODING_ERRORS as e:
            return self._system_error(f"Invalid call request: {e}")
        if name == "":
            return b""  # a ping: the handshake alone is the answer
        local_message = self.local_protocol.messages.get(name)
        # avro parses a protocol with no messages (or "messages": {}) to messages=None.
        if name not in (client_protocol.messages or {}) or local_message is None:
            return self._system_error(f"Unknown message: {name}")
        readers = self._request_readers.get(handshake["clientHash"])
        reader = readers.get(name) if readers is not None else None
        if reader is None:
            reader = avro_speed.reader_for(client_protocol.messages[name].request,
                                           local_message.request)
            if readers is not None:  # the client's protocol is cached: keep its readers too
                readers[name] = reader
        if (readers is not None and no_meta and handshake["clientProtocol"] is None
                and handshake.get("meta") is None
                and handshake_response == self._handshake_responses["BOTH"]):
            with decoder.reader.getbuffer() as call_request:
                head = bytes(call_request[:decoder.reader.tell()])
            self._remember_head(head, (local_message, reader))
        return self._call(local_message, reader, decoder)

    def _remember_head(self, head: bytes, call: tuple) -> None:
        """Remember what a call's first bytes mean: a client whose protocol is cached, that
        guessed our hash, sent no metadata, and called this message with this reader."""
        if len(self._call_heads) >= self.max_cached_protocols * len(self._response_encoders):
            self._call_heads.clear()  # only a cache: what it forgets is read again
        self._call_heads[head] = call
        self._head_lengths = tuple({len(head) for head in self._call_heads})

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

    def _call(self, local_message, reader: Callable, decoder: avro.io.BinaryDecoder) -> bytes:
        """The call response: read the parameters, invoke the handler, write its answer."""
        name = local_message.name
        try:
            request = reader(decoder)
        except DECODING_ERRORS as e:
            return self._system_error(f"Invalid parameters for {name}: {e}")
        response_writer, error_writer = self._response_encoders[name]
        try:
            response = self.invoke(local_message, request)
            return self._call_result(response_writer, response, is_error=False)
        except avro.errors.AvroRemoteException as e:
            return self._call_result(error_writer, str(e), is_error=True)
        except Exception:
            log.exception("handler for %r failed", name)
            return self._system_error(f"Internal error in {name}")

    def _call_result(self, encode: Callable, datum, is_error: bool) -> bytes:
        """A call response: empty metadata, the error flag, then the answer or the error."""
        return avro_speed.EMPTY_META + (_TRUE if is_error else _FALSE) + encode(datum)

    def _system_error(self, message: str) -> bytes:
        return self._call_result(_SYSTEM_ERROR_ENCODER, message[:MAX_ERROR_CHARS], is_error=True)


_SYSTEM_ERROR_ENCODER = avro_speed.encoder_for(avro.ipc.SYSTEM_ERROR_SCHEMA)


class FixedRequestor(avro.ipc.Requestor):
    """avro.ipc.Requestor with the flaws of avro 1.12.2's client side fixed, in one place.

    Bug fixed: avro.ipc keeps the server's protocol in module-level dicts keyed by
    transceiver.remote_name, which HTTPTransceiver sets to the *local* socket name. A later
    connection that happens to get the same local port, to another server, would find the
    wrong protocol; and the dicts grow by one entry per connection ever made. Here they are
    kept on the instance.

    Waste cut (tests/test_fast_path.py checks that the bytes are those of avro.ipc):
    - After the first call the handshake request never changes; it is encoded once per
      (server hash, whether to send our protocol) instead of on every call.
    - The start of each call request (empty metadata, message name) is encoded once.
    - Parameters are written by a writer made once per message (avro_speed.encoder_for).
    - A BOTH handshake response (four zero bytes) is recognised without avro's generic
      reader, and the empty response metadata is skipped likewise.
    - Response readers (avro_speed.reader_for) are made once per server protocol, not once per call.
    """

    def __init__(self, local_protocol: avro.protocol.Protocol, transceiver) -> None:
        super().__init__(local_protocol, transceiver)
        self._handshake_requests = {}
        self._call_heads = {}
        self._request_encoders = {}
        self._response_readers = {}
        self._both = avro_speed.encoder_for(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA)({"match": "BOTH"})

    @property
    def remote_protocol(self) -> Optional[avro.protocol.Protocol]:
        return self._remote_protocol

    @remote_protocol.setter
    def remote_protocol(self, protocol: avro.protocol.Protocol) -> None:
        if protocol is not self._remote_protocol:
            self._response_readers = {}  # they resolve the old server protocol's schemas
        self._remote_protocol = protocol

    @property
    def remote_hash(self) -> Optional[bytes]:
        return self._remote_hash

    @remote_hash.setter
    def remote_hash(self, hash: bytes) -> None:
        self._remote_hash = hash

    def write_handshake_request(self, encoder: avro.io.BinaryEncoder) -> None:
        if self.remote_hash is None:  # until the server says otherwise, guess it speaks ours
            self.remote_protocol = self.local_protocol
        server_hash = self.remote_hash or self.local_protocol.md5
        key = (server_hash, bool(self.send_protocol))
        request = self._handshake_requests.get(key)
        if request is None:
            datum = {"clientHash": self.local_protocol.md5, "serverHash": server_hash}
            if self.send_protocol:
                datum["clientProtocol"] = str(self.local_protocol)
            request = avro_speed.encoder_for(avro.ipc.HANDSHAKE_REQUEST_SCHEMA)(datum)
            self._handshake_requests[key] = request
        encoder.write(request)

    def write_call_request(self, message_name: str, request_datum: object,
                           encoder: avro.io.BinaryEncoder) -> None:
        head = self._call_heads.get(message_name)
        if head is None:
            message = self.local_protocol.messages.get(message_name)
            if message is None:
                raise avro.errors.AvroException(f"Unknown message: {message_name}")
            buffer = io.BytesIO(avro_speed.EMPTY_META)
            buffer.seek(0, io.SEEK_END)
            avro.io.BinaryEncoder(buffer).write_utf8(message.name)
            head = self._call_heads[message_name] = buffer.getvalue()
            self._request_encoders[message_name] = avro_speed.encoder_for(message.request)
        encoder.write(head + self._request_encoders[message_name](request_datum))

    def read_handshake_response(self, decoder: avro.io.BinaryDecoder) -> bool:
        reader = decoder.reader
        start = reader.tell()
        if reader.read(len(self._both)) == self._both:
            self.send_protocol = False
            return True
        reader.seek(start)
        return super().read_handshake_response(decoder)

    def read_call_response(self, message_name: str, decoder: avro.io.BinaryDecoder) -> object:
        readers = self._response_readers.get(message_name)
        if readers is None:
            remote = self.remote_protocol.messages.get(message_name)
            if remote is None:
                raise avro.errors.AvroException(f"Unknown remote message: {message_name}")
            local = self.local_protocol.messages[message_name]
            readers = self._response_readers[message_name] = (
                avro_speed.reader_for(remote.response, local.response),
                avro_speed.reader_for(remote.errors, local.errors))
        avro_speed.skip_metadata(decoder)
        response_reader, error_reader = readers
        if decoder.read_boolean():
            raise avro.errors.AvroRemoteException(error_reader(decoder))
        return response_reader(decoder)

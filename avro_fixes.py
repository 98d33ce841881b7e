"""Fixes for the flaws of avro.ipc (avro 1.12.2) that this example runs into, in one place.

Server side, FixedResponder: a lost system error, leaked handler errors, no ping, and an
unbounded protocol cache that a client can poison. Client side, FixedRequestor: the server's
protocol is cached under the local socket name. Each class says what it fixes and why;
tests/test_app.py and tests/test_end_to_end.py would fail without them.
"""

import hashlib
import io
import logging
from typing import Optional

import avro.errors
import avro.io
import avro.ipc
import avro.protocol

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

log = logging.getLogger(__name__)

# What a malformed body can make avro.io raise while it decodes: its own errors,
# UnicodeDecodeError (a ValueError) for a string that is not UTF-8, and RecursionError for a
# datum of a recursive client type nested deeper than Python's stack (avro.io recurses).
DECODING_ERRORS = (avro.errors.AvroException, ValueError, RecursionError)


class BadRequest(Exception):
    """The body is not an Avro call at all, so there is no Avro way to answer: HTTP 400."""


class FixedResponder(avro.ipc.Responder):
    """avro.ipc.Responder with the flaws of avro 1.12.2's server side fixed, in one place.

    - respond() writes a system error raised after the handshake into a buffer that it then
      throws away, so the client gets a bare handshake and a decoding error. Here the
      handshake and the call response are built separately and always sent together.
    - An exception in a handler goes back as its str(), which may leak internals. Here the
      client gets a short message and the traceback goes to the log.
    - The empty message name is the spec's ping, which avro answers with "Unknown message".
    - The client-protocol cache is an unbounded dict, keyed by whatever hash the client
      sends, so a client can grow it without limit or plant a wrong protocol under another
      client's hash. Here it is bounded, and a protocol is cached only under its own MD5.
    """

    def __init__(self, local_protocol: avro.protocol.Protocol,
                 max_cached_protocols: int = MAX_CACHED_PROTOCOLS) -> None:
        self.max_cached_protocols = max_cached_protocols
        super().__init__(local_protocol)

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
        while len(self.protocol_cache) > self.max_cached_protocols:
            del self.protocol_cache[next(iter(self.protocol_cache))]

    def respond(self, call_request: bytes) -> bytes:
        """Answer one call: the handshake response, then the call response (if any).

        Raises BadRequest when the body does not even start with a handshake request.
        """
        decoder = avro.io.BinaryDecoder(io.BytesIO(call_request))
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
        return (self._handshake_response(handshake, client_known=True)
                + self._call_response(client_protocol, decoder))

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
            response = {"match": "NONE"}
        elif handshake["serverHash"] == self.local_hash:
            response = {"match": "BOTH"}
        else:
            response = {"match": "CLIENT"}
        if response["match"] != "BOTH":
            response["serverProtocol"] = str(self.local_protocol)
            response["serverHash"] = self.local_hash
        buffer = io.BytesIO()
        avro.ipc.HANDSHAKE_RESPONDER_WRITER.write(response, avro.io.BinaryEncoder(buffer))
        return buffer.getvalue()

    def _call_response(self, client_protocol: avro.protocol.Protocol,
                       decoder: avro.io.BinaryDecoder) -> bytes:
        try:
            avro.ipc.META_READER.read(decoder)
            name = decoder.read_utf8()
        except DECODING_ERRORS as e:
            return self._system_error(f"Invalid call request: {e}")
        if name == "":
            return b""  # a ping: the handshake alone is the answer
        # avro parses a protocol with no messages (or "messages": {}) to messages=None.
        remote_message = (client_protocol.messages or {}).get(name)
        local_message = self.local_protocol.messages.get(name)
        if remote_message is None or local_message is None:
            return self._system_error(f"Unknown message: {name}")
        try:
            request = self.read_request(remote_message.request, local_message.request, decoder)
        except DECODING_ERRORS as e:
            return self._system_error(f"Invalid parameters for {name}: {e}")

        try:
            response = self.invoke(local_message, request)
            return self._call_result(local_message.response, response, is_error=False)
        except avro.errors.AvroRemoteException as e:
            return self._call_result(local_message.errors, e, is_error=True)
        except Exception:
            log.exception("handler for %r failed", name)
            return self._system_error(f"Internal error in {name}")

    def _call_result(self, schema, datum, is_error: bool) -> bytes:
        """A call response: empty metadata, the error flag, then the answer or the error."""
        buffer = io.BytesIO()
        encoder = avro.io.BinaryEncoder(buffer)
        avro.ipc.META_WRITER.write({}, encoder)
        encoder.write_boolean(is_error)
        write = self.write_error if is_error else self.write_response
        write(schema, datum, encoder)
        return buffer.getvalue()

    def _system_error(self, message: str) -> bytes:
        return self._call_result(avro.ipc.SYSTEM_ERROR_SCHEMA, message[:MAX_ERROR_CHARS],
                                 is_error=True)


class FixedRequestor(avro.ipc.Requestor):
    """avro.ipc.Requestor that remembers the server's protocol on the instance.

    avro.ipc keeps it in module-level dicts keyed by transceiver.remote_name, which
    HTTPTransceiver sets to the *local* socket name. A later connection that happens to get
    the same local port, to another server, would find the wrong protocol; and the dicts grow
    by one entry per connection ever made.
    """

    @property
    def remote_protocol(self) -> Optional[avro.protocol.Protocol]:
        return self._remote_protocol

    @remote_protocol.setter
    def remote_protocol(self, protocol: avro.protocol.Protocol) -> None:
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
        request = {"clientHash": self.local_protocol.md5,
                   "serverHash": self.remote_hash or self.local_protocol.md5}
        if self.send_protocol:
            request["clientProtocol"] = str(self.local_protocol)
        avro.ipc.HANDSHAKE_REQUESTOR_WRITER.write(request, encoder)

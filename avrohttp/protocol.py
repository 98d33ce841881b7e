"""A protocol that keeps its JSON text as written, for the handshake: parse(text).

avro 1.12.2 turns a parsed protocol back into JSON (str(protocol), which the handshake sends,
and whose MD5 is the protocol's hash) from what it kept, and it keeps neither the docs nor
`"one-way": true`. avsc, which compares both sides' protocols at the handshake, then refuses a
server or a client that has a one-way message ("inconsistent one-way message"). A Protocol
from parse() is avro's own, except that its text, and so its hash, is the text as written.
"""

import json
from typing import FrozenSet, Union

import avro.errors
import avro.protocol


class Protocol(avro.protocol.Protocol):
    """avro.protocol.Protocol whose str() is its JSON text as written, and md5 the MD5 of that
    text; one_way names its one-way messages."""

    def __init__(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise avro.errors.ProtocolParseException(f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise avro.errors.ProtocolParseException("not a JSON object")
        self.text = text  # before avro's __init__, which hashes str(self)
        messages = data.get("messages") or {}
        self.one_way: FrozenSet[str] = frozenset(
            name for name, message in messages.items()
            if isinstance(message, dict) and message.get("one-way") is True)
        # avro refuses a missing name, and one that is not a string, itself.
        super().__init__(data.get("protocol", ""), data.get("namespace"), data.get("types"),
                         data.get("messages"))

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> Protocol:
    """Parse a protocol's JSON text, as avro.protocol.parse does, keeping the text as written."""
    return Protocol(text)


def as_written(protocol: Union[str, avro.protocol.Protocol]) -> avro.protocol.Protocol:
    """A protocol given as text is parsed with parse(); a parsed one is taken as it is (if it
    came from avro.protocol.parse, its handshake text is avro's, without docs or one-way)."""
    if isinstance(protocol, str):
        return parse(protocol)
    return protocol

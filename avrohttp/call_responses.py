"""The call response that follows the handshake, as the Responder writes it: a handler's
answer, one of the message's declared errors, or a system error; and BadRequest, for a body
that is no Avro call at all, so that no call response can be written.

CallResponses is a base class of avrohttp.responder.Responder, kept here so that the
responder's module holds the reading of a call and this one the writing of its answer.
"""

import logging
from typing import Callable, Dict, Optional, Tuple

import avro.errors
import avro.ipc
import avro.protocol

from avrohttp import codec, hooks
from avrohttp.errors import DeclaredError
from avrohttp.hooks import Call

# System errors quote the client's input (a message name, a protocol); keep them short.
MAX_ERROR_CHARS = 300

# The Responder's log, named as it always was: applications and tests configure it by name.
log = logging.getLogger("avrohttp.responder")

# The error flag of a call response.
_FALSE, _TRUE = b"\x00", b"\x01"


class BadRequest(Exception):
    """The body is not an Avro call at all, so there is no Avro way to answer: HTTP 400."""


class CallResponses:
    """The writing of call responses, for avrohttp.responder.Responder, which sets the
    encoders below in its __init__."""

    # For each message name: the encoder of its response, and that of its errors union.
    _response_encoders: Dict[str, Tuple[Callable[[object], bytes], Callable[[object], bytes]]]
    # For each (message name, branch index) of a declared error: its encoder, made on first use.
    _error_encoders: Dict[Tuple[str, int], Callable[[object], bytes]]

    def _failed(self, local_message: avro.protocol.Message, error: Exception,
                call: Optional[Call]) -> bytes:
        """The call response for a handler that raised `error` (or whose answer does not fit
        the message's response type)."""
        name = local_message.name
        if isinstance(error, avro.errors.AvroRemoteException):
            if len(error.args) == 1 and isinstance(error.args[0], str):  # a plain string stays one
                answer = self._call_result(self._response_encoders[name][1], error.args[0],
                                           is_error=True)
            else:
                answer = self._declared_error(local_message, error)
            if call is not None:
                call.outcome = _error_outcome(answer)
            return answer
        log.error("handler for %r failed", name, exc_info=error)
        if call is not None:
            call.outcome = hooks.SYSTEM_ERROR
        return self._system_error(f"Internal error in {name}")

    def _declared_error(self, message: avro.protocol.Message,
                        error: avro.errors.AvroRemoteException) -> bytes:
        """The call response for an error that a handler raised with a datum: the branch of
        the message's errors union that the datum fits, as Java and avsc write it.

        DeclaredError(name, datum) names its branch; AvroRemoteException(datum), as avro.ipc
        users write it, takes the first declared branch that fits. A datum that fits none is a
        bug in the handler: it is logged, and the client gets a system error that says so.
        """
        name = message.name
        declared = list(enumerate(message.errors.schemas))[1:]  # 0: the system errors' string
        branches = declared
        if isinstance(error, DeclaredError):
            branches = [(index, schema) for index, schema in branches
                        if error.name in (schema.name, getattr(schema, "fullname", None))]
            datum = error.datum
        elif len(error.args) == 1:
            datum = error.args[0]
        else:  # AvroRemoteException() or (a, b): no datum, only words
            return self._call_result(self._response_encoders[name][1], str(error), True)
        for index, schema in branches:
            encode = self._error_encoders.get((name, index))
            if encode is None:
                encode = self._error_encoders[name, index] = codec.encoder_for(schema)
            try:
                encoded = encode(datum)
            except (avro.errors.AvroException, TypeError, ValueError):  # it does not fit
                continue
            return codec.EMPTY_META + _TRUE + codec.encode_long(index) + encoded
        names = ", ".join(schema.name for _, schema in declared) or "none"
        log.error("%r (its handler, or a hook refusing it) raised %r, which fits none of its "
                  "declared errors (%s)",
                  name, error, names)
        return self._system_error(
            f"{name} failed with an error it does not declare (declared: {names})")

    def _call_result(self, encode: Callable[[object], bytes], datum: object,
                     is_error: bool) -> bytes:
        """A call response: empty metadata, the error flag, then the answer or the error."""
        return codec.EMPTY_META + (_TRUE if is_error else _FALSE) + encode(datum)

    def _system_error(self, message: str) -> bytes:
        return self._call_result(_SYSTEM_ERROR_ENCODER, message[:MAX_ERROR_CHARS], is_error=True)


_SYSTEM_ERROR_ENCODER = codec.encoder_for(avro.ipc.SYSTEM_ERROR_SCHEMA)


def _error_outcome(call_response: bytes) -> str:
    """How a handler's AvroRemoteException went out, as the client will read it: a declared
    error (a branch of the errors union after the first), or a system error (the first
    branch, the string: a plain string raised, or a datum that fits no declared error)."""
    # Empty metadata, the error flag, then the branch index: 0 is the byte 0x00.
    return hooks.SYSTEM_ERROR if call_response[2:3] == b"\x00" else hooks.DECLARED_ERROR


def _encode_null(datum: object) -> bytes:
    return b""  # null takes no bytes

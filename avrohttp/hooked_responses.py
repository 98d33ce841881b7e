"""The Responder's side of the call hooks (avrohttp.hooks): respond() with the hooks run
around it, the response metadata they wrote put into the call response, and bad requests
told to them. None of it runs unless a hook is installed.

HookedResponses is a base class of avrohttp.responder.Responder, kept here so that the
responder's module holds the call itself and this one what the hooks add around it.
"""

import functools
from typing import TYPE_CHECKING, Dict, Optional, Union

from avrohttp import codec, hooks
from avrohttp.async_handlers import PendingAnswer
from avrohttp.call_responses import BadRequest
from avrohttp.hooks import Call


class HookedResponses:
    """The call hooks, for avrohttp.responder.Responder, which sets the attributes below in
    its __init__ and defines respond()."""

    hooks: hooks.Hooks
    _handshake_responses: Dict[str, bytes]  # by match: "BOTH", "CLIENT" or "NONE"

    if TYPE_CHECKING:  # the Responder's
        def respond(self, call_request: bytes, call: Optional[Call] = None,
                    origin: object = None) -> Union[bytes, PendingAnswer]: ...

    def _respond_with_hooks(self, call_request: bytes,
                            origin: object) -> Union[bytes, PendingAnswer]:
        """respond(), with the hooks run around it, and the response metadata they wrote."""
        call = Call(request_bytes=len(call_request))
        call.origin = origin
        try:
            response = self.respond(call_request, call, origin)
        except BadRequest:
            call.outcome = hooks.BAD_REQUEST
            self.hooks.after(call)
            raise
        except Exception:  # a bug: avrohttp.wsgi answers 500
            call.outcome = hooks.SYSTEM_ERROR
            self.hooks.after(call)
            raise
        if isinstance(response, PendingAnswer):  # the hooks' after() once it is answered
            response.then = functools.partial(self._after_hooks, call)
            return response
        return self._after_hooks(call, response)

    def _after_hooks(self, call: Call, response: bytes) -> bytes:
        if call.outcome is None:
            call.outcome = hooks.ANSWERED
        call.response_bytes = len(response)
        self.hooks.after(call)
        if call.response_meta and call.outcome not in (hooks.PING, hooks.HANDSHAKE):
            response = self._with_response_meta(response, call.response_meta)
        return response

    def _with_response_meta(self, response: bytes, meta: dict) -> bytes:
        """The response with `meta` in place of the empty metadata map of its call response.

        Every call response is written with empty metadata (codec.EMPTY_META); only a call
        whose hooks wrote some pays for encoding it. The call response starts right after
        the handshake response, which is one of the three in _handshake_responses (their
        first bytes, the match enum, differ).
        """
        for handshake in self._handshake_responses.values():
            if response.startswith(handshake):
                break
        else:
            raise AssertionError("a response that starts with no known handshake response")
        start = len(handshake)
        if response[start:start + 1] != codec.EMPTY_META:
            raise AssertionError("a call response that does not start with empty metadata")
        return response[:start] + codec.with_metadata(response[start:], meta)

    def bad_request(self, request_bytes: int) -> None:
        """Tell the hooks of a body that is not even Avro-framed (avrohttp.wsgi answers 400
        without calling respond())."""
        if self.hooks.hooks:
            call = Call(request_bytes=request_bytes)
            call.outcome = hooks.BAD_REQUEST
            self.hooks.after(call)

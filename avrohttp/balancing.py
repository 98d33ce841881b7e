"""avrohttp.Client's calls over several endpoints (Client(protocol, endpoints=[...])): a
Transceiver and a Requestor per endpoint, driven by avrohttp.endpoints' rules.

Each endpoint has its own keep-alive connection, and its own Requestor, since the handshake's
state (the server's protocol and hash) is each server's own: replicas of one service in the
middle of a rolling update may not serve the same protocol.
"""

import ssl
import time
from typing import Iterable, Optional, Tuple, Union

import avro.errors
import avro.protocol

from avrohttp.client import TRANSPORT_ERRORS, CallFailed, Transceiver
from avrohttp.client_rules import not_sent
from avrohttp.endpoints import Attempts, Endpoint, Endpoints, hooked
from avrohttp.hooks import Call, CallHook, Hooks
from avrohttp.protocol import as_written
from avrohttp.requestor import Requestor, run_exchange


class Balancer:
    """Calls over several endpoints, for avrohttp.Client: the options are Client's, and
    call() is Client.call's, with the time its caller has left (or None)."""

    def __init__(self, endpoints: Endpoints, protocol: Union[str, avro.protocol.Protocol],
                 timeout: float, connect_timeout: float,
                 ssl_context: Optional[ssl.SSLContext], retry: bool,
                 call_hooks: Iterable[CallHook]) -> None:
        self.endpoints = endpoints
        self.protocol = as_written(protocol)  # parsed once, for every endpoint's Requestor
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.retry = retry
        self.hooks = Hooks(call_hooks)  # run once per call, around all its attempts

    def call(self, message: str, parameters: dict, left: Optional[float]) -> object:
        if left is not None and left <= 0:
            raise not_sent(message)
        attempts = Attempts(self.endpoints, self.timeout, left, self.retry,
                            self.ssl_context is not None)
        if not self.hooks:
            return self._call(attempts, message, parameters, None)
        with hooked(self.hooks, message, attempts.seconds) as call:
            return self._call(attempts, message, parameters, call)

    def _call(self, attempts: Attempts, message: str, parameters: dict,
              call: Optional[Call]) -> object:
        while True:
            if self.endpoints.lookup_due():
                for gone in self.endpoints.refresh():
                    self._close(gone)
            endpoint, wait = attempts.next()
            if endpoint is None:
                time.sleep(wait)
                continue
            try:
                return self._attempt(attempts, endpoint, message, parameters, call)
            except _Again:
                continue
            finally:
                self.endpoints.release(endpoint)

    def _attempt(self, attempts: Attempts, endpoint: Endpoint, message: str,
                 parameters: dict, call: Optional[Call]) -> object:
        """One attempt of the call, on the endpoint's connection; _Again to make the next."""
        transceiver, requestor = self._line(endpoint)
        transceiver.set_timeouts(*attempts.timeouts(self.connect_timeout))
        transceiver.drop_if_closed_while_idle()
        kept_alive = transceiver.conn.sock is not None
        if not kept_alive:
            try:
                transceiver._connect()
            except TRANSPORT_ERRORS as e:
                transceiver.close()
                attempts.not_connected(endpoint, e)
                raise _Again from e  # to another endpoint, at once: the call was not sent
        self.endpoints.release(endpoint)
        timeout = attempts.sending(call)
        try:
            if call is None:
                answer = requestor.request(message, parameters, timeout)
            else:
                answer = run_exchange(requestor.exchange(message, parameters, None, call),
                                      transceiver.transceive)
        except TRANSPORT_ERRORS as e:
            transceiver.close()  # the next call on this endpoint starts anew
            if attempts.again(endpoint, e, kept_alive, message):
                raise _Again from e
            assert attempts.last is not None  # set by again()
            raise attempts.last[0] from e
        except CallFailed:  # an answer that is not Avro: the server was reached
            transceiver.close()
            attempts.answered(endpoint)
            raise
        except avro.errors.AvroException:  # an Avro error: an answer
            attempts.answered(endpoint)
            raise
        attempts.answered(endpoint)
        return answer

    def _line(self, endpoint: Endpoint) -> Tuple[Transceiver, Requestor]:
        """The endpoint's Transceiver and Requestor, made on its first call."""
        if endpoint.client is None:
            host, port = endpoint.address
            transceiver = Transceiver(host, port, self.timeout, self.connect_timeout,
                                      self.ssl_context)  # no retry of its own: ours
            transceiver.tls_name = endpoint.name
            requestor = Requestor(self.protocol, transceiver)
            requestor.timeout = self.timeout
            endpoint.client = (transceiver, requestor)
        return endpoint.client

    def _close(self, endpoint: Endpoint) -> None:
        if endpoint.client is not None:
            endpoint.client[0].close()

    def close(self) -> None:
        for endpoint in self.endpoints.all:
            self._close(endpoint)


class _Again(Exception):
    """The attempt failed, and the call goes on to the next."""

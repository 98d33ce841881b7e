"""avrohttp.AsyncClient's calls over several endpoints (AsyncClient(protocol,
endpoints=[...])): a pool of connections per endpoint, driven by avrohttp.endpoints' rules.

Each endpoint's pool is a single-endpoint AsyncClient of its own, with no hooks and no retry
(both are the balancer's): up to async_client.MAX_CONNECTIONS connections to that endpoint,
each kept for the next call, each with its own Requestor. A pool per endpoint rather than one
pool whose connections pick an endpoint: a connection is to one server for its whole life, so
the pools keep the code of a single-endpoint client as it is, and a call that waits for a
free connection waits for one of the endpoint that its turn gave it.
"""

import asyncio
import ssl
from typing import Optional

import avro.errors
import avro.protocol

from avrohttp import hooks
from avrohttp.arguments import BadArguments
from avrohttp.async_client import AsyncClient, _Connection
from avrohttp.client import TRANSPORT_ERRORS, CallFailed
from avrohttp.client_rules import not_sent
from avrohttp.endpoints import Attempts, Endpoint, Endpoints, hooked
from avrohttp.requestor import SEND_AGAIN


class AsyncBalancer:
    """Calls over several endpoints, for avrohttp.AsyncClient: the options are AsyncClient's,
    and call() is AsyncClient.call's, with the time its caller has left (or None)."""

    def __init__(self, endpoints: Endpoints, protocol: avro.protocol.Protocol, timeout: float,
                 connect_timeout: float, ssl_context: Optional[ssl.SSLContext], retry: bool,
                 call_hooks: hooks.Hooks) -> None:
        self.endpoints = endpoints
        self.protocol = protocol
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.retry = retry
        self.hooks = call_hooks  # the client's own: run once per call, around its attempts
        self._lookup: Optional[asyncio.Future] = None  # a look-up of the names, in a thread

    async def call(self, message: str, parameters: dict, left: Optional[float]) -> object:
        if left is not None and left <= 0:
            raise not_sent(message)
        attempts = Attempts(self.endpoints, self.timeout, left, self.retry,
                            self.ssl_context is not None)
        if not self.hooks:
            return await self._call(attempts, message, parameters, None)
        with hooked(self.hooks, message, attempts.seconds) as call:
            return await self._call(attempts, message, parameters, call)

    async def _call(self, attempts: Attempts, message: str, parameters: dict,
                    call: Optional[hooks.Call]) -> object:
        while True:
            if self.endpoints.lookup_due() or self._lookup is not None:
                await self._look_up()
            endpoint, wait = attempts.next()
            if endpoint is None:
                await asyncio.sleep(wait)
                continue
            pool = self._pool(endpoint)
            connection = pool._idle.pop() if pool._idle else await pool._free_connection()
            try:
                return await self._attempt(attempts, endpoint, connection, message,
                                           parameters, call)
            except _Again:
                continue
            finally:
                self.endpoints.release(endpoint)
                connection.timeout = self.timeout
                if endpoint.gone:
                    connection.close()
                pool._put_back(connection)

    async def _attempt(self, attempts: Attempts, endpoint: Endpoint, connection: _Connection,
                       message: str, parameters: dict, call: Optional[hooks.Call]) -> object:
        """One attempt of the call, on a connection of the endpoint's pool; _Again to make
        the next."""
        connection.timeout, _ = attempts.timeouts(self.connect_timeout)  # it connects within
        connection.drop_if_closed_while_idle()
        kept_alive = connection.writer is not None
        if not kept_alive:
            try:
                await connection._connect()
            except TRANSPORT_ERRORS as e:
                connection.close()
                attempts.not_connected(endpoint, e)
                raise _Again from e  # to another endpoint, at once: the call was not sent
        self.endpoints.release(endpoint)
        timeout = attempts.sending(call)
        try:
            if call is None and timeout is None:
                plain = connection.requestor.plain_call(message)  # see AsyncClient._call
                if plain is not None:
                    answer = plain.answer(
                        await connection.transceive(plain.request(parameters)))
                    if answer is not SEND_AGAIN:
                        attempts.answered(endpoint)
                        return answer
            answer = await connection.call(message, parameters, timeout, call)
        except TRANSPORT_ERRORS as e:
            connection.close()  # the next call on it starts on a fresh connection
            if attempts.again(endpoint, e, kept_alive, message):
                raise _Again from e
            assert attempts.last is not None  # set by again()
            raise attempts.last[0] from e
        except (avro.errors.AvroException, BadArguments):  # an Avro error, read whole; or
            attempts.answered(endpoint)  # parameters that do not fit, and nothing sent
            raise
        except BaseException as e:  # CallFailed, a cancelled call: the answer was not read
            connection.close()
            if isinstance(e, CallFailed):  # not an Avro answer, but the server was reached
                attempts.answered(endpoint)
            raise
        attempts.answered(endpoint)
        return answer

    async def _look_up(self) -> None:
        """Look the names up, in a thread (getaddrinfo blocks). The calls made meanwhile wait
        for the first look-up; after that, they go to the endpoints as they are."""
        if self._lookup is not None:
            if not self.endpoints.looked_up:
                await asyncio.shield(self._lookup)
            return
        self._lookup = asyncio.get_running_loop().run_in_executor(None, self.endpoints.look_up)
        try:
            found = await asyncio.shield(self._lookup)
        finally:
            self._lookup = None
        for endpoint in self.endpoints.update(found):
            if endpoint.client is not None:
                for connection in endpoint.client._idle:  # the busy ones close when done
                    connection.close()

    def _pool(self, endpoint: Endpoint) -> AsyncClient:
        """The endpoint's pool of connections, made on its first call."""
        if endpoint.client is None:
            host, port = endpoint.address
            pool = AsyncClient(self.protocol, host, port, timeout=self.timeout,
                               connect_timeout=self.connect_timeout,
                               ssl_context=self.ssl_context)
            pool.tls_name = endpoint.name
            endpoint.client = pool
        return endpoint.client

    async def close(self) -> None:
        for endpoint in self.endpoints.all:
            if endpoint.client is not None:
                await endpoint.client.close()


class _Again(Exception):
    """The attempt failed, and the call goes on to the next."""

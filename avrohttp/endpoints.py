"""A client that knows several endpoints: its calls balanced over them, an endpoint that
cannot be reached set aside for a while, and a call that could not go out sent to another.

avrohttp.Client and avrohttp.AsyncClient take them with `endpoints=`, in place of host and
port:

    Client(EchoProtocol, endpoints=["10.0.0.1:8130", ("10.0.0.2", 8130)], retry=True)
    Client(EchoProtocol, endpoints=["echo.shop.svc.cluster.local:8130"])

An endpoint is a (host, port) pair or a "host:port" string ("[::1]:8130" for IPv6). A host
given as an address is one endpoint. A host given as a name stands for all its addresses
(getaddrinfo), looked up at the first call and again every RESOLVE_SECONDS, so that the
client follows the pods behind a Kubernetes headless Service as they come and go. Pass an
Endpoints to change that period, the backoff, or (for tests) the clock and the resolver.

The rules, which docs/deployment.md ("Two ways to balance") explains:
- Each call goes to the next endpoint in turn (round robin) that is not set aside, on a
  keep-alive connection of that endpoint's own (AsyncClient: a pool of that endpoint's own).
- An endpoint that fails to connect (refused, unreachable, a connect timeout, TLS refused),
  or whose new connection closes without an answer, is set aside for Backoff's wait: 0.5 s,
  doubling with each failure in a row up to 30 s, with full jitter. The call goes to another
  endpoint at once: a call that could not connect was never sent.
- A kept-alive connection that the server has closed while it was idle (an idle timeout, a
  server that stops) is noticed before the call goes out on it, and a new one is made.
- A call that was sent but got no answer (its connection broke, or the server closed it) is
  sent again only with retry=True, by Client's rule (avrohttp.client.resend), to the next
  endpoint: at most MAX_SENDS times in all, the first retry at once, each later one after
  Backoff's wait. A timeout is never sent again (the server may still be working on it), nor
  an Avro error (an answer).
- All of it within the call's time: the client's timeout, or its caller's time left
  (avrohttp.context.time_left()); a retry sends the time that is left as its timeout.
- When every endpoint is set aside, the call waits for the first to come back, if it comes
  back within the time left; otherwise it fails at once with a CallFailed that names each
  endpoint and why it failed, in one line.
Hooks (avrohttp.hooks) see one call per call(), whatever its attempts.
"""

import contextlib
import ipaddress
import random
import socket
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union,
                    cast)

from avrohttp.client import DEFAULT_HOST, DEFAULT_PORT, CallFailed, describe, failure, resend
from avrohttp.client_rules import no_answer_in_time_left
from avrohttp.context import TIMEOUT_KEY, timeout_value
from avrohttp.hooks import ANSWERED, Call, Hooks, client_outcome

RESOLVE_SECONDS = 30.0  # how often a name is looked up again
FIRST_WAIT = 0.5  # the longest wait after an endpoint's first failure (full jitter: 0 to it)
LONGEST_WAIT = 30.0  # the longest wait of all
MAX_SENDS = 3  # the times a call may be sent, with retry=True: the first and two retries
TRYING = float("inf")  # Endpoint.back_at of an endpoint that a call is trying (pick())
TRYING_POLL = 0.05  # how often a call that waits for it looks again

Address = Tuple[str, int]
EndpointSpec = Union[str, Tuple[str, int]]


def parse_endpoint(endpoint: EndpointSpec) -> Address:
    """(host, port) from "host:port", "[IPv6 address]:port" or a (host, port) pair;
    ValueError, in one line, if it is none of them."""
    if isinstance(endpoint, str):
        host, colon, port_text = endpoint.rpartition(":")
        if not colon or not port_text.isdigit():
            raise ValueError(f"endpoint {endpoint!r} is not host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"endpoint {endpoint!r}: write an IPv6 address in brackets, "
                             "as [::1]:8130")
        port: object = int(port_text)
    else:
        try:
            host, port = endpoint
        except (TypeError, ValueError):
            raise ValueError(f"endpoint {endpoint!r} is neither host:port nor (host, port)")
    if not isinstance(host, str) or not host:
        raise ValueError(f"endpoint {endpoint!r} has no host")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"endpoint {endpoint!r}: the port must be 1 to 65535")
    return host, port


def is_address(host: str) -> bool:
    """Whether a host is an IP address, rather than a name to look up."""
    try:
        ipaddress.ip_address(host.partition("%")[0])  # an IPv6 address may name its zone
    except ValueError:
        return False
    return True


def resolve_all(host: str, port: int) -> List[Address]:
    """Every address of a name, in getaddrinfo's order, each once."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(cast(Address, tuple(info[4][:2])) for info in found))


class Backoff:
    """Exponential backoff with full jitter: after n failures in a row, a wait drawn evenly
    from 0 to ceiling(n), which is `first` for the first failure, doubling with each one more,
    up to `longest`. The jitter keeps many clients that saw the same failure from coming back
    all at once. random: a function that returns a float in [0, 1), for tests."""

    def __init__(self, first: float = FIRST_WAIT, longest: float = LONGEST_WAIT,
                 random: Callable[[], float] = random.random) -> None:
        self.first = first
        self.longest = longest
        self.random = random

    def ceiling(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.longest, self.first * 2.0 ** min(failures - 1, 64))

    def wait(self, failures: int) -> float:
        """Seconds to wait after this many failures in a row (none after none)."""
        return self.random() * self.ceiling(failures)


class Endpoint:
    """One address that calls go to, and how it has fared."""

    __slots__ = ("address", "name", "failures", "back_at", "why", "client", "gone")

    def __init__(self, address: Address, name: str) -> None:
        self.address = address
        self.name = name  # the host as given: the name that its TLS certificate must have
        self.failures = 0  # failures to connect, in a row
        self.back_at = 0.0  # when it may be tried again, by Endpoints.clock
        self.why = ""  # its last failure, in words
        self.client: Any = None  # the client's own for it: its connection (or its pool)
        self.gone = False  # no longer among its name's addresses

    def __str__(self) -> str:
        host, port = self.address
        return f"{host}:{port}" + ("" if self.name == host else f" ({self.name})")


class Endpoints:
    """The endpoints of a client, and the state of each: which is next, which are set aside.

    endpoints: as the module says. resolve_every: seconds between two look-ups of the names.
    backoff: how long an endpoint that fails is set aside. clock: the time, in seconds, that
    the backoff counts in. resolve: a function (host, port) -> [(address, port), ...], in
    place of getaddrinfo (resolve_all).
    """

    def __init__(self, endpoints: Iterable[EndpointSpec],
                 resolve_every: float = RESOLVE_SECONDS, backoff: Optional[Backoff] = None,
                 clock: Callable[[], float] = time.monotonic,
                 resolve: Callable[[str, int], List[Address]] = resolve_all) -> None:
        if isinstance(endpoints, (str, bytes)):
            raise ValueError("endpoints: give a list of endpoints, not one string")
        self.given = [parse_endpoint(endpoint) for endpoint in endpoints]
        if not self.given:
            raise ValueError("endpoints: give at least one")
        self.names = [(host, port) for host, port in self.given if not is_address(host)]
        self.resolve_every = resolve_every
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.resolve = resolve
        # Until a name is looked up, it is one endpoint, which a connection resolves itself.
        self.all = [Endpoint(address, address[0]) for address in dict.fromkeys(self.given)]
        self.next_lookup = float("-inf") if self.names else float("inf")
        self.looked_up = False  # whether the names have been looked up yet
        self._resolved: Dict[Address, List[Address]] = {}  # each name's last addresses
        self._next = 0  # where the round robin goes on

    def lookup_due(self) -> bool:
        return self.clock() >= self.next_lookup

    def look_up(self) -> Dict[Address, List[Address]]:
        """Each name's addresses now (this waits for the resolver). A name that does not
        resolve keeps the addresses it had; until it has had some, it stands for itself."""
        found = {}
        for name in self.names:
            try:
                found[name] = self.resolve(*name) or self._resolved.get(name, [name])
            except (OSError, UnicodeError):
                found[name] = self._resolved.get(name, [name])
        return found

    def update(self, found: Dict[Address, List[Address]]) -> List[Endpoint]:
        """Take the names' addresses from look_up(). An endpoint that stays keeps its state;
        returns those that are gone, whose connections the client closes."""
        self._resolved = found
        self.looked_up = True
        self.next_lookup = self.clock() + self.resolve_every
        wanted: Dict[Address, str] = {}
        for host, port in self.given:
            for address in found.get((host, port), [(host, port)]):
                wanted.setdefault(address, host)
        kept = {endpoint.address: endpoint for endpoint in self.all}
        self.all = [kept.pop(address) if address in kept else Endpoint(address, name)
                    for address, name in wanted.items()]
        for endpoint in kept.values():
            endpoint.gone = True
        return list(kept.values())

    def refresh(self) -> List[Endpoint]:
        """look_up() and update(), at once: the endpoints that are gone."""
        return self.update(self.look_up())

    def pick(self) -> Optional[Endpoint]:
        """The next endpoint in turn that is not set aside, or None if all of them are.

        An endpoint back from being set aside is tried by one call at a time, until it
        connects (release()): a server that is still down then holds up one call, not all
        those that an AsyncClient has in flight at that moment.
        """
        now = self.clock()
        count = len(self.all)
        for step in range(count):
            endpoint = self.all[(self._next + step) % count]
            if endpoint.back_at <= now:
                self._next = (self._next + step + 1) % count
                if endpoint.failures:
                    endpoint.back_at = TRYING
                return endpoint
        return None

    def release(self, endpoint: Endpoint) -> None:
        """The call that tried an endpoint back from being set aside has connected, or is
        over: other calls may have it again, unless it was set aside anew."""
        if endpoint.back_at == TRYING:
            endpoint.back_at = 0.0

    def back_in(self) -> float:
        """Seconds until the first endpoint that is set aside may be tried again (or, if
        each is being tried by a call, until it is worth looking again)."""
        back_at = min(endpoint.back_at for endpoint in self.all)
        return TRYING_POLL if back_at == TRYING else back_at - self.clock()

    def set_aside(self, endpoint: Endpoint, why: str) -> None:
        endpoint.failures += 1
        endpoint.why = why
        endpoint.back_at = self.clock() + self.backoff.wait(endpoint.failures)

    def unreachable(self) -> CallFailed:
        """The CallFailed of a call that no endpoint could take: each, and why, in one line."""
        if len(self.all) == 1:
            [endpoint] = self.all
            return CallFailed(f"cannot reach the server at {endpoint}: {endpoint.why}")
        whys = "; ".join(f"{endpoint}: {endpoint.why or 'not tried in the time left'}"
                         for endpoint in self.all)
        return CallFailed(f"cannot reach any of the {len(self.all)} servers: {whys}")


def endpoints_for(endpoints: Union[Endpoints, Iterable[EndpointSpec]], host: str,
                  port: int) -> Endpoints:
    """A client's Endpoints, from its endpoints= (ValueError if host or port came too)."""
    if (host, port) != (DEFAULT_HOST, DEFAULT_PORT):
        raise ValueError("give host and port, or endpoints, not both")
    return endpoints if isinstance(endpoints, Endpoints) else Endpoints(endpoints)


class Attempts:
    """One call's way through the endpoints, for both clients: which endpoint next, how long
    to wait first, what time each attempt has, and when to give up. Its time is real time
    (time.monotonic), whatever clock the endpoints' backoff counts in."""

    def __init__(self, endpoints: Endpoints, timeout: float, left: Optional[float],
                 retry: bool, tls: bool) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self.within = left is not None and left < timeout  # the caller's time left, less
        self.seconds = left if left is not None and self.within else timeout
        self.ends = time.monotonic() + self.seconds
        self.retry = retry
        self.tls = tls
        self.tried = False  # whether an attempt has begun
        self.sends = 0
        self.resume_at = 0.0  # a retry waits until then
        self.last: Optional[Tuple[CallFailed, Exception]] = None  # the last sent's failure

    def left(self) -> float:
        return self.ends - time.monotonic()

    def next(self) -> Tuple[Optional[Endpoint], float]:
        """(an endpoint, 0) to try now, or (None, seconds) to wait, then ask again; raises
        the CallFailed once no endpoint can be tried in the time left."""
        now = time.monotonic()
        if self.resume_at > now:
            return None, self.resume_at - now
        if self.ends > now:
            endpoint = self.endpoints.pick()
            if endpoint is not None:
                return endpoint, 0.0
            back_in = self.endpoints.back_in()
            if back_in < self.ends - now:
                return None, back_in
        if self.last is not None:
            failed, error = self.last
            raise failed from error
        raise self.endpoints.unreachable()

    def timeouts(self, connect_timeout: float) -> Tuple[float, float]:
        """This attempt's timeouts, for the answer and to connect: the call's own for its
        first attempt, then no more than the time left."""
        left = self.seconds
        if self.tried:
            left = max(self.left(), 0.001)
        self.tried = True
        return min(self.timeout, left), min(connect_timeout, left)

    def not_connected(self, endpoint: Endpoint, error: Exception) -> None:
        self.endpoints.set_aside(endpoint, describe(error, self.tls))

    def sending(self, call: Optional[Call]) -> Optional[float]:
        """Count a send; the timeout to send with it: None for the client's own, on the first
        send of a call that has it; otherwise the time left (also in call's metadata)."""
        self.sends += 1
        if self.sends == 1 and not self.within:
            return None
        left = max(self.left(), 0.0)
        if call is not None:
            call.request_meta[TIMEOUT_KEY] = timeout_value(left)
        return left

    def answered(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0

    def again(self, endpoint: Endpoint, error: Exception, kept_alive: bool,
              message: str) -> bool:
        """The sent call failed with `error`: whether to send it again (after next()'s wait);
        if not, the caller raises self.last."""
        failed = failure(error, endpoint.address, self.tls, kept_alive)
        timed_out = isinstance(error, TimeoutError)  # NoAnswerInTime, or in connecting
        if timed_out and self.within:
            failed = no_answer_in_time_left(endpoint.address, message, self.seconds)
        self.last = (failed, error)
        if not kept_alive and not timed_out:  # a new connection that broke: set it aside
            self.endpoints.set_aside(endpoint, describe(error, self.tls))
        if timed_out or not resend(error, self.retry) or self.sends >= MAX_SENDS:
            return False
        wait = self.endpoints.backoff.wait(self.sends - 1)  # the first retry goes at once
        if wait >= self.left():
            return False
        self.resume_at = time.monotonic() + wait
        return True


@contextlib.contextmanager
def hooked(hooks: Hooks, message: str, seconds: float) -> Iterator[Call]:
    """The hooks run once around all the attempts of a call (as Requestor runs them around
    one): yields the Call that each attempt sends and adds to (Requestor.exchange)."""
    call = Call(message)
    call.request_meta[TIMEOUT_KEY] = timeout_value(seconds)
    try:
        hooks.before(call)  # which may refuse the call
        yield call
    except BaseException as error:
        call.outcome = client_outcome(error)
        raise
    else:
        call.outcome = ANSWERED
    finally:
        hooks.after(call)

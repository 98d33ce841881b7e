"""A rolling update under load, done the way Kubernetes does one: does any call fail, and
do the new replicas get the calls?

Try it: `make rollout`, or `python -m deploy.rollout` from the repository's root (nginx must
be installed). Three replicas of server.py run behind nginx (deploy/nginx.conf), while
clients call through nginx, each on its own keep-alive connection. After a first window of
load, each replica is replaced in turn:

1. the old replica gets SIGTERM while nginx still sends it calls (Kubernetes sends the
   signal and updates the endpoints at the same time, and the balancers learn of it later);
2. a moment later (--removal-lag) it leaves nginx's list: the configuration is rewritten
   and nginx reloaded, as an ingress controller does;
3. a new replica starts, at a new address, and is polled on GET /health/ready until it
   answers 200, as a readiness probe does; then it joins nginx's list (another reload);
4. the old replica's exit is awaited, and one line printed.

That order (maxSurge 0, maxUnavailable 1) leaves two replicas for a moment, the harder case;
with --surge, step 3 comes first (maxSurge 1, maxUnavailable 0, as deploy/kubernetes does).

A last window of load follows. Then a table: the calls made and failed in each window,
those that nginx sent to a second replica, and each replica's share of the answers.

With --balancer tcp, nginx balances connections instead of calls (deploy/stream.py), as
kube-proxy does in front of a Service: a kept-alive client stays on the replica it met
until its connection closes, and --max-connection-age is what moves it. --scale-up shows
that best: two replicas under load, then a third joins, and no replica is stopped.

The replicas run in network namespaces, each with an address of its own as a pod has
(deploy/netns.py), when this machine allows it (root), on loopback ports otherwise.
tests/test_rollout.py runs rollout().
"""

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Union

from deploy import netns
from deploy.load import Load, LoadResult
from deploy.processes import FleetError
from deploy.replicas import Balancer, Nginx, Replica, Window
from deploy.stream import TcpBalancer

REPLICAS = 3
# For an old replica to exit, past its --shutdown-delay: it answers its calls in flight.
EXIT_SECONDS = 20.0


class Settings(NamedTuple):
    loop: str = "eventlet"
    workers: int = 1
    shutdown_delay: float = 3.0
    max_connection_age: float = 2.0
    seconds: float = 5.0  # of load before the rollout, and after it
    clients: int = 8
    network: str = "auto"  # "netns", "loopback", or "auto": netns where it works
    removal_lag: float = 1.0  # from SIGTERM to leaving nginx's list
    post_retries: bool = True  # False: nginx never sends a call again once it has sent it
    surge: bool = False  # True: the new replica in nginx's list before the old one's SIGTERM
    balancer: str = "http"  # "http": nginx picks a replica per call; "tcp": per connection
    scale_up: bool = False  # True: from two replicas to three, rather than a rolling update

    def server_options(self) -> List[str]:
        options = ["--loop", self.loop, "--workers", str(self.workers),
                   "--shutdown-delay", str(self.shutdown_delay)]
        if self.max_connection_age > 0:
            options += ["--max-connection-age", str(self.max_connection_age)]
        if self.balancer == "tcp":  # the calls are counted in the replicas' logs
            options.append("--access-log")
        return options


class Phase(NamedTuple):
    name: str
    seconds: float
    made: int
    failed: int
    # Answers by replica, and the calls sent again: from nginx's access log; with --balancer
    # tcp, from the replicas' own, and the calls that the clients sent again.
    calls: Window


class Replacement(NamedTuple):
    """One replica replaced; the times are seconds from the old one's SIGTERM."""
    old: str  # addresses
    new: str
    removed_after: float  # the old one out of nginx's list (nginx reloaded)
    ready_after: float  # the new one answering 200 on /health/ready (--surge: 0, before)
    added_after: float  # the new one in nginx's list (nginx reloaded; --surge: 0, before)
    exited_after: Optional[float]  # the old one exited; None: it had to be killed
    exit_code: Optional[int]


class RolloutResult(NamedTuple):
    balancer: str  # "http" or "tcp"
    network: str  # where the replicas ran, and why there
    phases: List[Phase]  # before, rollout (or scale-up), after
    replacements: List[Replacement]  # none in a scale-up
    replicas: List[str]  # every replica's address, in the order they started
    new: List[str]  # those started during the rollout (or the scale-up)
    errors: list  # the first few failed calls, as text
    upstream_errors: Counter  # from nginx's error log: what went wrong, how often

    @property
    def made(self) -> int:
        return sum(phase.made for phase in self.phases)

    @property
    def failed(self) -> int:
        return sum(phase.failed for phase in self.phases)

    def new_replicas_answered(self) -> List[int]:
        """Calls answered by each new replica in the window after the rollout."""
        after = self.phases[-1].calls.answered
        return [after[address] for address in self.new]


def choose_network(network: str) -> tuple:
    """(True if the replicas run in namespaces, a line saying where they run and why)."""
    if network == "loopback":
        return False, "replicas on loopback ports (--network loopback)"
    reason = netns.unavailable()
    if reason is None:
        return True, "replicas in network namespaces, each with an address of its own"
    if network == "netns":
        raise FleetError(f"network namespaces are not available: {reason}")
    return False, f"replicas on loopback ports: network namespaces are not available ({reason})"


class _Marks:
    """The moments between phases: the clock, the clients' counts, the balancer's mark()."""

    def __init__(self, load: Load, balancer: Union[Balancer, TcpBalancer]) -> None:
        self.load, self.balancer = load, balancer
        self.phases: List[Phase] = []
        self._last = self._now()

    def _now(self) -> tuple:
        return time.monotonic(), self.load.result(), self.balancer.mark()

    def end_phase(self, name: str) -> None:
        (start, before, log_start), (end, after, log_end) = self._last, self._now()
        self.phases.append(Phase(name, end - start, after.made - before.made,
                                 after.failed - before.failed,
                                 self.balancer.window(log_start, log_end)))
        self._last = (end, after, log_end)


def rollout(settings: Settings, say: Callable[[str], None] = print) -> RolloutResult:
    in_namespaces, network = choose_network(settings.network)
    directory = Path(tempfile.mkdtemp(prefix="avro-rollout-"))
    started: List[Replica] = []
    balancer: Optional[Union[Balancer, TcpBalancer]] = None

    def new_replica() -> Replica:
        subnet = netns.Subnet().create() if in_namespaces else None
        replica = Replica(len(started) + 1, directory, settings.server_options(), subnet)
        started.append(replica)
        replica.start()
        return replica

    first = REPLICAS - 1 if settings.scale_up else REPLICAS  # started before the load
    try:
        serving = [new_replica() for _ in range(first)]
        for replica in serving:
            replica.wait_until_ready()
        balancer = (TcpBalancer(directory, started) if settings.balancer == "tcp"
                    else Balancer(directory, settings.post_retries))
        balancer.start([replica.address for replica in serving])
        say(f"nginx on port {balancer.port}, in front of {network}: "
            + ", ".join(replica.address for replica in serving))
        replacements = []
        with Load(balancer.port, settings.clients) as load:
            marks = _Marks(load, balancer)
            time.sleep(settings.seconds)
            marks.end_phase("before")
            if settings.scale_up:
                say(_scale_up(serving, balancer, new_replica, load.result()))
                marks.end_phase("scale-up")
            else:
                for position, old in enumerate(list(serving)):
                    replacements.append(_replace(old, position, serving, balancer,
                                                 new_replica, settings))
                    say(_progress(replacements[-1], load.result()))
                marks.end_phase("rollout")
            time.sleep(settings.seconds)
            marks.end_phase("after")
        return RolloutResult(settings.balancer, network, marks.phases, replacements,
                             [replica.address for replica in started],
                             [replica.address for replica in started[first:]],
                             load.result().errors, balancer.upstream_errors())
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in started:
            replica.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _scale_up(serving: List[Replica], balancer: Nginx, new_replica: Callable[[], Replica],
              load: LoadResult) -> str:
    """One more replica: started, polled until ready, then in nginx's list."""
    started = time.monotonic()
    new = new_replica()
    new.wait_until_ready()
    ready_after = time.monotonic() - started
    serving.append(new)
    balancer.route([replica.address for replica in serving])
    return (f"+ {new.address}: ready {ready_after:.1f} s after its start, in nginx "
            f"{time.monotonic() - started:.1f} s; {load.made} calls so far, "
            f"{load.failed} failed")


def _replace(old: Replica, position: int, serving: List[Replica], balancer: Nginx,
             new_replica: Callable[[], Replica], settings: Settings) -> Replacement:
    if settings.surge:  # maxSurge 1, maxUnavailable 0: the new one first
        new = new_replica()
        new.wait_until_ready()
        serving.insert(position, new)
        balancer.route([replica.address for replica in serving])
    old.terminate()

    def since() -> float:
        return time.monotonic() - old.terminated_at

    time.sleep(settings.removal_lag)
    serving.remove(old)
    balancer.route([replica.address for replica in serving])
    removed_after = since()
    ready_after = added_after = 0.0
    if not settings.surge:  # maxSurge 0, maxUnavailable 1: the old one out first
        new = new_replica()
        new.wait_until_ready()
        ready_after = since()
        serving.insert(position, new)
        balancer.route([replica.address for replica in serving])
        added_after = since()
    code = old.wait(max(0.0, old.terminated_at + settings.shutdown_delay + EXIT_SECONDS
                        - time.monotonic()))
    exited_after = None
    if code is None:
        old.stop()
    else:
        while old.exited_at is None:  # its watcher notes the moment
            time.sleep(0.01)
        exited_after = old.exited_at - old.terminated_at
    return Replacement(old.address, new.address, removed_after, ready_after, added_after,
                       exited_after, code)


def _progress(replacement: Replacement, load: LoadResult) -> str:
    if replacement.exited_after is None:
        ending = "it did not exit in time and was killed"
    else:
        ending = f"exited {replacement.exited_after:.1f} s (code {replacement.exit_code})"
    new = (f"new ready {replacement.ready_after:.1f} s and in nginx "
           f"{replacement.added_after:.1f} s, " if replacement.ready_after else "")
    return (f"{replacement.old} -> {replacement.new}: after SIGTERM, old out of nginx "
            f"{replacement.removed_after:.1f} s, {new}old {ending}; "
            f"{load.made} calls so far, {load.failed} failed")


def summary(result: RolloutResult) -> List[str]:
    """The table printed at the end: one column per phase."""
    def row(label: str, values: list) -> str:
        return f"{label:<22}" + "".join(f"{value:>10}" for value in values)

    phases = result.phases
    lines = [row("", [phase.name for phase in phases]),
             row("seconds", [f"{phase.seconds:.1f}" for phase in phases]),
             row("calls made", [phase.made for phase in phases]),
             row("calls failed", [phase.failed for phase in phases])]
    who = "nginx" if result.balancer == "http" else "the clients"  # TCP: nginx cannot
    lines.append(row(f"retried by {who}", [phase.calls.retried for phase in phases]))
    lines.append("share of the calls answered, by replica:")
    for address in result.replicas:
        shares = []
        for phase in phases:
            count, total = phase.calls.answered[address], sum(phase.calls.answered.values())
            share = 100 * count / total if total else 0
            shares.append("-" if not count else f"{share:.1f}%" if share >= 0.1 else "<0.1%")
        lines.append(row(f"  {address}", shares))
    for error, count in result.upstream_errors.most_common():
        lines.append(f"nginx's error log: {count} x {error}")
    lines.append(f"{result.made} calls made, {result.failed} failed")
    return lines


def main(argv: Optional[list] = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m deploy.rollout",
        description="Replace each of three server.py behind nginx in turn, under load, as "
                    "a Kubernetes rolling update does, and count the calls that fail.")
    parser.add_argument("--loop", choices=("eventlet", "asyncio"), default=defaults.loop,
                        help="the servers' host (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="processes per replica (default: %(default)s)")
    parser.add_argument("--shutdown-delay", type=float, default=defaults.shutdown_delay,
                        metavar="SECONDS",
                        help="server.py's: after SIGTERM, how long a replica goes on "
                             "serving while the balancer takes it out (default: "
                             "%(default)s; 0 shows what happens without it)")
    parser.add_argument("--max-connection-age", type=float,
                        default=defaults.max_connection_age, metavar="SECONDS",
                        help="server.py's: close kept-alive connections older than this "
                             "(default: %(default)s; 0: never)")
    parser.add_argument("--seconds", type=float, default=defaults.seconds,
                        help="of load before the rollout, and after it (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=defaults.clients,
                        help="clients calling through nginx at once, each on its own "
                             "keep-alive connection (default: %(default)s)")
    parser.add_argument("--removal-lag", type=float, default=defaults.removal_lag,
                        metavar="SECONDS",
                        help="from a replica's SIGTERM to its removal from nginx's list, "
                             "the time a balancer takes to learn of it (default: %(default)s)")
    parser.add_argument("--network", choices=("auto", "netns", "loopback"),
                        default=defaults.network,
                        help="replicas in network namespaces, on loopback ports, or in "
                             "namespaces where this machine allows them (default: "
                             "%(default)s)")
    parser.add_argument("--no-post-retries", action="store_true",
                        help="nginx without non_idempotent: a call that it has sent is never "
                             "sent again, as for messages that must not run twice; a call "
                             "that meets a closed connection fails")
    parser.add_argument("--surge", action="store_true",
                        help="start each new replica, and put it in nginx's list, before the "
                             "old one gets SIGTERM (maxSurge 1, maxUnavailable 0, as "
                             "deploy/kubernetes/deployment.yaml says); by default the old one "
                             "goes first (maxSurge 0, maxUnavailable 1), the harder case")
    parser.add_argument("--balancer", choices=("http", "tcp"), default=defaults.balancer,
                        help="nginx as an HTTP proxy, which picks a replica for each call "
                             "(deploy/nginx.conf), or as a TCP balancer, which picks one for "
                             "each connection, as kube-proxy does (default: %(default)s)")
    parser.add_argument("--scale-up", action="store_true",
                        help="no rolling update: start with two replicas, then add a third "
                             "under load, and see what share of the calls it gets")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.clients < 1 or args.seconds <= 0:
        parser.error("--workers and --clients must be at least 1, and --seconds above 0")
    if args.balancer == "tcp" and args.no_post_retries:
        parser.error("--no-post-retries is for --balancer http: a TCP balancer never sends "
                     "a call again")
    if args.scale_up and args.surge:
        parser.error("--surge is for a rolling update, not --scale-up")
    settings = Settings(args.loop, args.workers, args.shutdown_delay, args.max_connection_age,
                        args.seconds, args.clients, args.network, args.removal_lag,
                        not args.no_post_retries, args.surge, args.balancer, args.scale_up)

    # On SIGTERM too, leave through rollout()'s finally, which stops every process.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    what = (f"from {REPLICAS - 1} replicas to {REPLICAS}" if args.scale_up
            else f"rolling update of {REPLICAS} replicas")
    if args.balancer == "tcp":
        what += " behind nginx's TCP balancer"
    print(f"{what} (--loop {args.loop}, --workers "
          f"{args.workers}, --shutdown-delay {args.shutdown_delay:g}, --max-connection-age "
          f"{args.max_connection_age:g}) under load from {args.clients} clients"
          + (", nginx retrying no call it has sent" if args.no_post_retries else "")
          + (", each new replica started before the old one stops" if args.surge else ""),
          flush=True)
    try:
        result = rollout(settings, lambda line: print(line, flush=True))
    except (FleetError, netns.NetnsError) as e:
        print(f"rollout: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rollout: interrupted; stopped nginx and the replicas", file=sys.stderr)
        return 130
    print("\n".join(summary(result)))
    for error in result.errors[:3]:  # "...: 502 Bad Gateway", without nginx's page
        print(f"  failed: {error.splitlines()[0].removesuffix(': <html>')}")
    starved = [address for address, answered in
               zip(result.new, result.new_replicas_answered()) if answered == 0]
    if starved:
        print("no calls reached " + ", ".join(starved) + " after the "
              + ("scale-up" if args.scale_up else "rollout"))
    return 0 if result.failed == 0 and not starved else 1


if __name__ == "__main__":
    raise SystemExit(main())

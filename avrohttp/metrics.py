"""Per-message metrics in Prometheus's text format: a call hook (avrohttp.hooks) that counts
every call, and the collector that GET /metrics renders with prometheus_client.

ServerMetrics(responder) counts the server's calls (by message and outcome), their latency
and sizes, the calls in flight, the open connections, the HTTP error answers and the
protocol cache; ClientMetrics(protocol) counts a client's calls the same way. Try it:
`python server.py --metrics`, a few `python client.py` calls, then
`curl localhost:8130/metrics`.
docs/metrics.md shows a scrape and says what each metric is.

Why not prometheus_client's own Counter and Histogram: each inc() or observe() takes a lock
and walks the buckets in Python, 2 to 10 µs each under eventlet (measured), and a call
needs six of them: more than a tenth of an echo's whole cost. Here a call costs a few
additions into plain Python lists, one slot per series (_Layout), and prometheus_client
turns them into its text format only when /metrics is scraped.

With --workers N, each worker copies its counts, once every FLUSH_SECONDS and when it stops,
into a file of its own, mapped into memory, in a directory that the supervisor makes (and
removes) and names in METRICS_DIR_ENV; whichever worker answers /metrics adds up every
worker's file. That is the idea of prometheus_client's
multiprocess mode, without its per-value cost (a lock and a dict lookup for each write), and
without its one switch, an environment variable read when prometheus_client is first
imported, which would change how every metric of the process works.
"""

import array
import bisect
import glob
import hashlib
import mmap
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import avro.ipc
import avro.protocol
try:
    import prometheus_client
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)
except ModuleNotFoundError as e:  # one line: which extra to install
    from avrohttp import extras
    raise extras.missing("metrics", e) from None

from avrohttp import hooks
from avrohttp.hooks import Call, CallHook
from avrohttp.options import METRICS_DIR_ENV  # noqa: F401 (named here too, for users)

# The label of every message name that is not in the protocol (made up, garbage, a ping, or
# not read at all): one label, so that no client can add series, and with them memory.
OTHER_MESSAGE = "_other"
# Seconds: an echo takes about 10 µs in the server, a slow handler seconds.
LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                   0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Bytes of an Avro message (handshake included): from an echo's 40 to the 1 MiB body limit.
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
# Where a histogram's sum is, after its buckets (the last one +Inf); in-flight is gauge 0.
_LATENCY_SUM = len(LATENCY_BUCKETS) + 1
_SIZE_SUM = len(SIZE_BUCKETS) + 1
_IN_FLIGHT = 0
# With --workers N, how often each worker copies its counts to its file for the others to
# read: a scrape shows the other workers' counts as they were up to this long ago.
FLUSH_SECONDS = 1.0
# The HTTP answers that are not an Avro answer, by status (any other goes under "other").
HTTP_STATUSES = ("200", "400", "404", "405", "408", "413", "415", "500", "503", "other")


class _Layout:
    """Where each count lives in the lists of counts (and in a worker's file): one slot per
    series (and per bucket). The same protocol gives every worker the same layout."""

    def __init__(self, messages: Iterable[str], outcomes: Tuple[str, ...],
                 gauges: Tuple[str, ...], statuses: Tuple[str, ...]) -> None:
        self.messages = (*sorted(messages), OTHER_MESSAGE)
        self.outcomes = outcomes
        self.statuses = statuses
        size = 0
        # Per message: calls by outcome, then three histograms, each its buckets (the last
        # one +Inf) and its sum. Looked up by Call.message, None for a call not read that far
        # (which finds no entry, and counts under OTHER_MESSAGE).
        self.per_message: Dict[Optional[str], Tuple[int, int, int, int]] = {}
        for message in self.messages:
            calls = size
            latency = calls + len(outcomes)
            requests = latency + len(LATENCY_BUCKETS) + 2
            responses = requests + len(SIZE_BUCKETS) + 2
            size = responses + len(SIZE_BUCKETS) + 2
            self.per_message[message] = (calls, latency, requests, responses)
        self.status_base = size
        self.counters = size + len(statuses)
        self.gauges = {name: index for index, name in enumerate(gauges)}
        key = repr((self.messages, outcomes, gauges, statuses, LATENCY_BUCKETS, SIZE_BUCKETS))
        self.key = hashlib.md5(key.encode()).hexdigest()[:12]


class _Slots:
    """The counts of one process: counters (which only grow) and gauges, each a list of
    floats. With a directory, flush() copies them into two files of this process there,
    mapped into memory, and totals() adds up every process's files."""

    def __init__(self, kind: str, layout: _Layout, directory: Optional[str]) -> None:
        self.kind = kind
        self.layout = layout
        self.directory = directory
        # Lists, not the mapped files themselves: an item of a list is added to in a third
        # of the time an item of a memoryview takes (measured), and a call adds to eight.
        self.counters = [0.0] * layout.counters
        self.gauges = [0.0] * len(layout.gauges)
        if directory is not None:
            self._files = {part: self._mapped(part, len(values))
                           for part, values in (("counters", self.counters),
                                                ("gauges", self.gauges))}

    def _path(self, part: str, pid: object) -> str:
        assert self.directory is not None  # the files are only made with a directory
        return os.path.join(self.directory, f"{self.kind}-{self.layout.key}-{pid}.{part}")

    def _mapped(self, part: str, slots: int) -> "memoryview[float]":
        size = max(slots, 1) * 8
        with open(self._path(part, os.getpid()), "wb+") as file:  # new, zeroed
            file.truncate(size)
            mapped = mmap.mmap(file.fileno(), size)
        return memoryview(mapped).cast("d")[:slots]

    def flush(self) -> None:
        """Copy this process's counts into its files, for the other workers to read."""
        if self.directory is not None:
            self._files["counters"][:] = array.array("d", self.counters)
            self._files["gauges"][:] = array.array("d", self.gauges)

    def totals(self) -> Tuple[List[float], List[float]]:
        """The counters and gauges summed over every process that shares the directory."""
        if self.directory is None:
            return list(self.counters), list(self.gauges)
        self.flush()  # this process's own counts are exact
        return (self._sum("counters", len(self.counters)),
                self._sum("gauges", len(self.gauges)))

    def _sum(self, part: str, slots: int) -> List[float]:
        totals = [0.0] * slots
        for path in glob.glob(self._path(part, "*")):
            try:
                with open(path, "rb") as file:
                    data = file.read(slots * 8)
            except FileNotFoundError:  # a dead worker's gauges, just removed
                continue
            if len(data) == slots * 8:
                for index, value in enumerate(memoryview(data).cast("d")):
                    totals[index] += value
        return totals


def forget_worker_gauges(directory: str, pid: int) -> None:
    """A worker is gone: drop its gauges (its calls in flight and connections are no more),
    keep its counters (a total must never go down)."""
    for path in glob.glob(os.path.join(directory, f"*-{pid}.gauges")):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


class _CallMetrics(CallHook, prometheus_client.registry.Collector):
    """Counts calls into _Slots (as a hook) and renders them (as a prometheus_client
    collector). ServerMetrics and ClientMetrics say which side."""

    side = ""
    verb = ""  # what a side does with its calls: "answered", "made"
    duration_help = ""
    outcomes: Tuple[str, ...] = ()
    gauge_names: Tuple[str, ...] = ("in_flight",)
    statuses: Tuple[str, ...] = ()

    def __init__(self, protocol: avro.protocol.Protocol, directory: Optional[str] = None) -> None:
        self.protocol = protocol
        self.layout = _Layout((protocol.messages or {}).keys(), self.outcomes,
                              self.gauge_names, self.statuses)
        self.slots = _Slots(self.side, self.layout, directory)
        # By Call.outcome, which is Optional but always set by the time after() runs.
        self._outcome_index: Dict[Optional[str], int] = {
            outcome: i for i, outcome in enumerate(self.outcomes)}
        self._in_flight = self.layout.gauges["in_flight"]
        assert self._in_flight == _IN_FLIGHT
        self._counters, self._gauges = self.slots.counters, self.slots.gauges
        self._per_message = self.layout.per_message
        self._other = self.layout.per_message[OTHER_MESSAGE]

    def flush(self) -> None:
        """With a directory (--workers N): make this process's counts visible to the others.
        avrohttp.cli calls it every FLUSH_SECONDS, and each scrape for its own worker."""
        self.slots.flush()

    # --- The hook: runs on every call, so it does as little as it can ----------------------

    def before(self, call: Call) -> None:
        self._gauges[_IN_FLIGHT] += 1

    def after(self, call: Call, bisect_left=bisect.bisect_left) -> None:
        # Every name here is a local or an attribute of self: this runs on every call.
        self._gauges[_IN_FLIGHT] -= 1
        counters = self._counters
        calls, latency, requests, responses = self._per_message.get(call.message, self._other)
        counters[calls + self._outcome_index[call.outcome]] += 1
        value = call.seconds
        counters[latency + bisect_left(LATENCY_BUCKETS, value)] += 1
        counters[latency + _LATENCY_SUM] += value
        value = call.request_bytes
        counters[requests + bisect_left(SIZE_BUCKETS, value)] += 1
        counters[requests + _SIZE_SUM] += value
        value = call.response_bytes
        counters[responses + bisect_left(SIZE_BUCKETS, value)] += 1
        counters[responses + _SIZE_SUM] += value

    # --- The collector: runs on each scrape ------------------------------------------------

    def collect(self) -> Iterator[prometheus_client.Metric]:
        counters, gauges = self.slots.totals()
        prefix = f"avro_{self.side}"
        calls = CounterMetricFamily(
            f"{prefix}_calls", f"Avro calls {self.verb}, by message and outcome",
            labels=("message", "outcome"))
        families = {
            "latency": HistogramMetricFamily(
                f"{prefix}_call_duration_seconds", self.duration_help, labels=("message",)),
            "requests": HistogramMetricFamily(
                f"{prefix}_request_bytes", "Size of the call requests (Avro, with the "
                "handshake, without the framing)", labels=("message",)),
            "responses": HistogramMetricFamily(
                f"{prefix}_response_bytes", "Size of the call responses (Avro, with the "
                "handshake, without the framing)", labels=("message",)),
        }
        for message in self.layout.messages:
            base, latency, requests, responses = self.layout.per_message[message]
            for index, outcome in enumerate(self.outcomes):
                calls.add_metric((message, outcome), counters[base + index])
            for family, start, bounds in ((families["latency"], latency, LATENCY_BUCKETS),
                                          (families["requests"], requests, SIZE_BUCKETS),
                                          (families["responses"], responses, SIZE_BUCKETS)):
                buckets, total = [], 0.0
                for bound, count in zip((*bounds, float("inf")),
                                        counters[start:start + len(bounds) + 1]):
                    total += count
                    buckets.append((_bound_text(bound), total))
                family.add_metric((message,), buckets, counters[start + len(bounds) + 1])
        yield calls
        yield from families.values()
        yield GaugeMetricFamily(f"{prefix}_calls_in_flight", f"Avro calls {self.verb} now",
                                value=gauges[self._in_flight])
        yield from self.collect_more(counters, gauges)

    def collect_more(self, counters: List[float], gauges: List[float]) -> Iterable:
        return ()


def _bound_text(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


class ServerMetrics(_CallMetrics):
    """The server's metrics: install it as a hook of the responder, and give it to
    avrohttp.make_application, which then serves GET /metrics (avrohttp.cli does both).

        metrics = ServerMetrics(responder)
        responder.hooks.append(metrics)
        application = avrohttp.make_application(responder, metrics=metrics)

    directory: where the workers of --workers N share their counts (METRICS_DIR_ENV); None,
    the default, keeps them in this process's memory. In one process, /metrics also has
    prometheus_client's process metrics (CPU, memory, open files).
    """

    side = "server"
    verb = "answered"
    duration_help = ("Time to answer an Avro call, from the whole body read to the answer "
                     "ready (HTTP not included)")
    outcomes = hooks.SERVER_OUTCOMES
    gauge_names = ("in_flight", "connections", "protocol_cache")
    statuses = HTTP_STATUSES

    def __init__(self, responder: avro.ipc.Responder, directory: Optional[str] = None) -> None:
        super().__init__(responder.local_protocol, directory)
        self.responder = responder
        self._connections = self.layout.gauges["connections"]
        self._protocol_cache = self.layout.gauges["protocol_cache"]
        self._status_index = {status: self.layout.status_base + index
                              for index, status in enumerate(self.statuses)}
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        if directory is None:
            prometheus_client.ProcessCollector(registry=self.registry)

    def flush(self) -> None:
        self.slots.gauges[self._protocol_cache] = len(self.responder.protocol_cache)
        super().flush()

    def collect(self) -> Iterator[prometheus_client.Metric]:
        # Read at each scrape, and at each flush, rather than counted on each call.
        self.slots.gauges[self._protocol_cache] = len(self.responder.protocol_cache)
        return super().collect()

    def add(self, collector: prometheus_client.registry.Collector) -> None:
        """Show another collector's metrics in /metrics too: a ClientMetrics, say, for the
        calls this service makes to another."""
        self.registry.register(collector)

    def count_status(self, status: int) -> None:
        """Count an HTTP answer that is not an Avro answer (avrohttp.wsgi and serve)."""
        index = self._status_index.get(str(status), self._status_index["other"])
        self.slots.counters[index] += 1

    def connection_opened(self) -> None:
        self.slots.gauges[self._connections] += 1

    def connection_closed(self) -> None:
        self.slots.gauges[self._connections] -= 1

    def exposition(self) -> Tuple[str, bytes]:
        """GET /metrics: (Content-Type, body) in Prometheus's text format."""
        return prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(
            self.registry)

    def collect_more(self, counters: List[float], gauges: List[float]) -> Iterable:
        statuses = CounterMetricFamily(
            "avro_server_http_responses", "HTTP answers that carry no Avro answer (refused "
            "requests, /health, /metrics), by status", labels=("status",))
        for status in self.statuses:
            statuses.add_metric((status,), counters[self._status_index[status]])
        yield statuses
        yield GaugeMetricFamily("avro_server_connections", "Open HTTP connections",
                                value=gauges[self._connections])
        yield GaugeMetricFamily(
            "avro_server_protocol_cache_entries", "Client protocols in the protocol cache "
            "(ours included; with --workers, summed over the workers)",
            value=gauges[self._protocol_cache])


class ClientMetrics(_CallMetrics):
    """A client's metrics, for a service that calls another: install it as a hook of the
    Client (Client(..., call_hooks=[metrics])), and show it with ServerMetrics.add()."""

    side = "client"
    verb = "made"
    duration_help = "Time an Avro call took, the whole round trip"
    outcomes = hooks.CLIENT_OUTCOMES

"""The benchmark's report: ratios to the limit, the table, the targets and the comparisons.
The plot is bench/plot.py's, the facts about the machine that the results are saved with
bench/machine.py's; plot, machine_facts and busy_machine_note are importable from here too.
"""

from typing import Optional

from bench.machine import busy_machine_note as busy_machine_note  # still importable from here
from bench.machine import machine_facts as machine_facts  # still importable from here
from bench.plot import plot as plot  # still importable from here
from bench.settings import (LIMIT_SERVERS, STRETCH_ASYNCIO_RATIO, STRETCH_LIMIT_RATIO,
                            STRETCH_WORKERS_RATIO, TARGET_ASYNC_CLIENT_RATIO,
                            TARGET_ASYNCIO_P99_RATIO, TARGET_ASYNCIO_RATIO,
                            TARGET_ASYNCIO_WORKERS_P99_MS, TARGET_ASYNCIO_WORKERS_RATIO,
                            TARGET_CLIENT_RATIO, TARGET_LIMIT_RATIO, TARGET_ONE_CONNECTION_RATIO,
                            TARGET_P99_RATIO, TARGET_WORKERS_P99_MS, TARGET_WORKERS_RATIO)


# --- Report ----------------------------------------------------------------------------------

def ratio(value: Optional[float], base: Optional[float]) -> Optional[float]:
    if value is None or not base:
        return None
    return value / base


def limit_points(servers: list) -> dict:
    """The limit at each number of connections: the point of the faster of LIMIT_SERVERS
    (bare eventlet.wsgi, with or without one yield per request), and which one it is."""
    limits = {}
    for server in servers:
        if server["name"] not in LIMIT_SERVERS:
            continue
        for point in server["points"]:
            best = limits.get(point["connections"])
            if best is None or point["requests_per_s"] > best[1]["requests_per_s"]:
                limits[point["connections"]] = (server["label"], point)
    return limits


def add_ratios(servers: list) -> None:
    """Each point's figures as ratios to the limit's at the same number of connections."""
    limits = limit_points(servers)
    for server in servers:
        for point in server["points"]:
            _, base = limits.get(point["connections"], (None, {}))
            point["ratio_to_limit"] = {
                key: None if (r := ratio(point[key], base.get(key))) is None else round(r, 3)
                for key in ("requests_per_s", "p50_ms", "p99_ms", "rss_bytes")}


def connections_text(count: int) -> str:
    return f"{count:,} connection{'' if count == 1 else 's'}"


def _cell(value: Optional[float], ratio_value: Optional[float], digits: int) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return f"{text} ({ratio_value:.2f})" if ratio_value is not None else text


def format_table(servers: list) -> str:
    """The results, one row per server and number of connections; (ratio to the limit)."""
    header = ("conns", "server", "req/s", "p50 ms", "p99 ms", "errors", "RSS MiB")
    rows = []
    notes = []
    for count in sorted({p["connections"] for s in servers for p in s["points"]}):
        for server in servers:
            point = next((p for p in server["points"] if p["connections"] == count), None)
            if point is None:
                continue
            ratios = point.get("ratio_to_limit", {})
            rss = point["rss_bytes"] / 2**20 if point["rss_bytes"] else None
            if point["error_total"]:
                kinds = ", ".join(f"{kind} {n}" for kind, n in point["errors"].items() if n)
                notes.append(f"{server['label']} at {connections_text(count)}: "
                             f"{point['error_total']:,} errors ({kinds or 'no kind given'})")
            rows.append((f"{count:,}", server["label"],
                         _cell(point["requests_per_s"], ratios.get("requests_per_s"), 0),
                         _cell(point["p50_ms"], ratios.get("p50_ms"), 2),
                         _cell(point["p99_ms"], ratios.get("p99_ms"), 2),
                         f"{point['error_total']:,}",
                         _cell(rss, ratios.get("rss_bytes"), 1)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [f"{row[0]:>{widths[0]}}", f"{row[1]:<{widths[1]}}"]
        cells += [f"{cell:>{width}}" for cell, width in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells))
    lines.insert(1, "-" * len(lines[0]))
    limits = limit_points(servers)
    lines.append("(in brackets: the ratio to the limit, the faster of the two bare eventlet.wsgi "
                 "rows at the same number of connections: " + ", ".join(
                     f"{connections_text(count)}: {label}"
                     for count, (label, _) in sorted(limits.items())) + ")")
    for server in servers:
        if not server["available"]:
            lines.append(f"{server['label']}: not available: {server['reason']}")
        if server["note"]:
            notes.append(f"{server['label']} {server['note']}")
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines)


def _point(servers: list, name: str, connections: int) -> Optional[dict]:
    for server in servers:
        if server["name"] == name:
            return next((p for p in server["points"] if p["connections"] == connections), None)
    return None


# What a target names a server by when it was not measured at all (--only, say).
LABELS = {"workers": "server.py --workers", "avsc_workers": "avsc in as many processes",
          "server_asyncio": "server.py --loop asyncio", "uvicorn": "bare uvicorn",
          "workers_asyncio": "server.py --loop asyncio --workers",
          "uvicorn_workers": "bare uvicorn --workers"}


def _label(servers: list, name: str) -> str:
    return next((s["label"] for s in servers if s["name"] == name), LABELS.get(name, name))


def _throughput_target(add, text: str, ours: Optional[dict], other: Optional[dict],
                       wanted: float, not_measured: str) -> None:
    """A target of req/s of at least `wanted` times another server's at the same point:
    met, missed, or (without both points) not measured."""
    if ours and other:
        r = ratio(ours["requests_per_s"], other["requests_per_s"])
        add(text, r is not None and r >= wanted,
            f"{ours['requests_per_s']:,.0f} against {other['requests_per_s']:,.0f} "
            f"({r or 0:.2f})")
    else:
        add(text, None, not_measured)


def asyncio_targets(servers: list) -> list:
    """The asyncio host's targets: `server.py --loop asyncio` against bare uvicorn answering
    fixed bytes, in one process and with as many workers, in the same run."""
    targets = []

    def add(text: str, met: Optional[bool], measured: str) -> None:
        targets.append({"target": text, "met": met, "measured": measured})

    def not_measured(*names: str) -> str:
        gone = [_label(servers, name) for name in names if _point(servers, name, 50) is None
                and _point(servers, name, 1000) is None]
        return f"not measured ({' and '.join(gone) or 'no point there'} not available)"

    host, bare = _label(servers, "server_asyncio"), _label(servers, "uvicorn")
    ours, limit = _point(servers, "server_asyncio", 50), _point(servers, "uvicorn", 50)
    for wanted, stretch in ((TARGET_ASYNCIO_RATIO, ""), (STRETCH_ASYNCIO_RATIO, " (stretch)")):
        _throughput_target(add, f"{host} at 50 connections: req/s >= {wanted:.2f} x {bare}"
                                f"{stretch}", ours, limit, wanted,
                           not_measured("server_asyncio", "uvicorn"))

    ours, limit = _point(servers, "server_asyncio", 1000), _point(servers, "uvicorn", 1000)
    text = (f"{host} at 1,000 connections: no errors or timeouts, "
            f"p99 <= {TARGET_ASYNCIO_P99_RATIO} x {bare}'s")
    if ours and limit:
        r = ratio(ours["p99_ms"], limit["p99_ms"])
        met = ours["error_total"] == 0 and r is not None and r <= TARGET_ASYNCIO_P99_RATIO
        add(text, met, f"{ours['error_total']} errors, p99 {ours['p99_ms'] or 0:.1f} ms "
                       f"against {limit['p99_ms'] or 0:.1f} ms ({r or 0:.2f})")
    else:
        add(text, None, not_measured("server_asyncio", "uvicorn"))

    host, bare = _label(servers, "workers_asyncio"), _label(servers, "uvicorn_workers")
    ours, limit = _point(servers, "workers_asyncio", 50), _point(servers, "uvicorn_workers", 50)
    _throughput_target(
        add, f"{host} at 50 connections: req/s >= {TARGET_ASYNCIO_WORKERS_RATIO:.2f} x {bare}",
        ours, limit, TARGET_ASYNCIO_WORKERS_RATIO,
        not_measured("workers_asyncio", "uvicorn_workers"))
    text = f"{host} at 50 connections: p99 <= {TARGET_ASYNCIO_WORKERS_P99_MS:g} ms"
    if ours:
        add(text, ours["p99_ms"] is not None and ours["p99_ms"] <= TARGET_ASYNCIO_WORKERS_P99_MS,
            f"{ours['p99_ms'] or 0:.1f} ms")
    else:
        add(text, None, not_measured("workers_asyncio"))
    return targets


def comparisons(servers: list, connections: int = 50) -> list:
    """For information: the asyncio host's req/s against eventlet's server.py and against
    the faster of the two gRPC servers, at 50 connections."""
    ours = _point(servers, "server_asyncio", connections)
    if ours is None:
        return []
    found = []
    grpc = [(_label(servers, name), point) for name in ("grpc", "grpc_aio")
            if (point := _point(servers, name, connections))]
    others = [(_label(servers, "server"), _point(servers, "server", connections))]
    if grpc:
        others.append(max(grpc, key=lambda pair: pair[1]["requests_per_s"]))
    for label, point in others:
        if point and point["requests_per_s"]:
            found.append({
                "server": _label(servers, "server_asyncio"), "against": label,
                "connections": connections,
                "ratio": round(ours["requests_per_s"] / point["requests_per_s"], 3),
                "measured": f"{ours['requests_per_s']:,.0f} against "
                            f"{point['requests_per_s']:,.0f} req/s"})
    return found


def format_comparisons(found: list) -> str:
    return "\n".join(f"  {c['server']} at {connections_text(c['connections'])}: "
                     f"{c['ratio']:.2f} x {c['against']} ({c['measured']})" for c in found)


def evaluate_targets(servers: list, clients: Optional[dict]) -> list:
    """The issue's targets, each met (True), missed (False) or not measured (None)."""
    targets = []
    limits = limit_points(servers)

    def add(text: str, met: Optional[bool], measured: str) -> None:
        targets.append({"target": text, "met": met, "measured": measured})

    ours, (limit_label, limit) = _point(servers, "server", 50), limits.get(50, (None, None))
    for wanted, stretch in ((TARGET_LIMIT_RATIO, ""), (STRETCH_LIMIT_RATIO, " (stretch)")):
        text = f"server.py at 50 connections: req/s >= {wanted:.2f} x the limit{stretch}"
        if ours and limit:
            r = ratio(ours["requests_per_s"], limit["requests_per_s"])
            add(text, r is not None and r >= wanted, f"{r or 0:.2f} x ({limit_label})")
        else:
            add(text, None, "not measured")

    ours, bare = _point(servers, "server", 1), _point(servers, "bare", 1)
    text = (f"server.py at 1 connection: req/s >= {TARGET_ONE_CONNECTION_RATIO:.2f} x "
            "bare eventlet.wsgi")
    if ours and bare:
        r = ratio(ours["requests_per_s"], bare["requests_per_s"])
        add(text, r is not None and r >= TARGET_ONE_CONNECTION_RATIO, f"{r or 0:.2f} x")
    else:
        add(text, None, "not measured")

    ours, (limit_label, limit) = _point(servers, "server", 1000), limits.get(1000, (None, None))
    text = (f"server.py at 1,000 connections: no errors or timeouts, "
            f"p99 <= {TARGET_P99_RATIO} x the limit's")
    if ours and limit:
        r = ratio(ours["p99_ms"], limit["p99_ms"])
        met = ours["error_total"] == 0 and r is not None and r <= TARGET_P99_RATIO
        add(text, met, f"{ours['error_total']} errors, p99 {ours['p99_ms']:.1f} ms = "
                       f"{r or 0:.2f} x ({limit_label})")
    else:
        add(text, None, "not measured")

    workers, avsc = _point(servers, "workers", 50), _point(servers, "avsc_workers", 50)
    label = _label(servers, "workers")
    avsc_label = _label(servers, "avsc_workers")
    text = f"{label} at 50 connections: p99 <= {TARGET_WORKERS_P99_MS:g} ms"
    if workers:
        add(text, workers["p99_ms"] <= TARGET_WORKERS_P99_MS, f"{workers['p99_ms']:.1f} ms")
    else:
        add(text, None, "not measured (--workers not available)")
    missing = [n for n, p in (("--workers", workers), (avsc_label, avsc)) if p is None]
    for wanted, stretch in ((TARGET_WORKERS_RATIO, ""), (STRETCH_WORKERS_RATIO, " (stretch)")):
        _throughput_target(
            add, f"{label} at 50 connections: req/s >= {wanted:.2f} x {avsc_label}{stretch}",
            workers, avsc, wanted, f"not measured ({' and '.join(missing)} not available)")

    targets.extend(asyncio_targets(servers))

    text = f"EchoClient: calls/s >= {TARGET_CLIENT_RATIO:.2f} x a bare http.client loop"
    if clients:
        r = clients["ratio_to_http_client"]["EchoClient"]
        add(text, r is not None and r >= TARGET_CLIENT_RATIO, f"{r:.2f} x")
    else:
        add(text, None, "not measured")
    # AsyncClient, against a bare loop of its HTTP library: see bench/load.py, ASYNC_CLIENTS.
    text = (f"AsyncClient: calls/s >= {TARGET_ASYNC_CLIENT_RATIO:.2f} x a bare loop of its "
            "HTTP library")
    async_ratio = (clients or {}).get("ratio_to_bare_async_loop")
    if async_ratio is not None:
        add(text, async_ratio >= TARGET_ASYNC_CLIENT_RATIO, f"{async_ratio:.2f} x")
    elif clients is None:
        add(text, None, "not measured")
    else:
        add(text, None, "not measured (avrohttp.AsyncClient is not there)")
    return targets


def format_targets(targets: list) -> str:
    verdicts = {True: "met", False: "MISSED", None: "not measured"}
    return "\n".join(f"  [{verdicts[t['met']]}] {t['target']}: {t['measured']}"
                     for t in targets)


def format_clients(clients: dict) -> str:
    lines = []
    for name, median in clients["median_calls_per_s"].items():
        r = clients["ratio_to_http_client"][name]
        lines.append(f"  {name:<20} {median:>7,.0f} calls/s  ({r:.2f} of the http.client loop; "
                     f"best round {clients['best_calls_per_s'][name]:,.0f})")
    if clients.get("ratio_to_bare_async_loop") is not None:
        lines.append(f"  AsyncClient: {clients['ratio_to_bare_async_loop']:.2f} of the bare "
                     "loop of its HTTP library, asyncio's streams (median of the rounds' ratios)")
    return "\n".join(lines)

"""bench/metrics_cost.py: pairing the runs with and without metrics, the order they take
turns in, and the verdict; figures are not checked (they measure the machine's mood)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import metrics_cost


def servers(on_cpu, off_cpu, on_rps=(100.0, 100.0), off_rps=(100.0, 100.0)):
    return [
        {"name": "baseline", "requests_per_s_by_run": {"50": [1.0, 1.0]}},
        {"name": "server-metrics", "requests_per_s_by_run": {"50": list(on_rps)},
         "cpu_us_per_request_by_run": {"50": list(on_cpu)}},
        {"name": "server", "requests_per_s_by_run": {"50": list(off_rps)},
         "cpu_us_per_request_by_run": {"50": list(off_cpu)}},
    ]


def test_runs_are_paired_in_order_and_judged_on_cpu():
    results = servers([101.0, 110.0, 99.0], [100.0, 100.0, 100.0], (98.0, 90.0, 100.0),
                      (100.0, 100.0, 100.0))
    assert metrics_cost.paired_ratios(results, 50) == [0.98, 0.9, 1.0]
    # 1 µs added to a request that costs 100 µs of CPU without: 1/101 of the throughput.
    cost = metrics_cost.summary(results, [50], {"us_per_call_with": 4.0,
                                                "us_per_call_without": 3.0, "us_added": 1.0,
                                                "median_us_added": 1.1})
    cpu = cost["cpu_per_request_with_over_without"]["50"]
    assert (cpu["median_ratio"], cpu["min_ratio"], cpu["max_ratio"]) == (1.01, 0.99, 1.1)
    assert cost["estimated_cost_at_50"] == 0.0099
    verdict = metrics_cost.target(cost)
    assert verdict["met"] is True
    assert verdict["measured"] == ("1.0% by CPU accounting; paired h2load runs: CPU per request "
                                   "x1.010 (0.990 to 1.100 over 3 runs)")
    text = metrics_cost.format_summary(cost)
    assert "server CPU per request with metrics / without = 1.010" in text
    assert "3.00 µs without, 4.00 µs with (best rounds: +1.00 µs" in text
    assert "estimated cost at 50 connections (µs added / CPU µs per request): 1.0%" in text


def test_more_than_two_percent_is_missed_and_nothing_is_not_measured():
    cost = metrics_cost.summary(servers([103.0], [97.0]), [50], {"us_added": 3.0})
    assert cost["estimated_cost_at_50"] == 0.03
    assert metrics_cost.target(cost)["met"] is False
    # Cheap by accounting, but the runs under wrk say otherwise: missed too.
    cost = metrics_cost.summary(servers([110.0], [100.0]), [50], {"us_added": 1.0})
    assert cost["estimated_cost_at_50"] < 0.02
    assert metrics_cost.target(cost)["met"] is False
    nothing = metrics_cost.summary(servers([], []), [50], None)
    assert metrics_cost.target(nothing)["met"] is None


def test_with_and_without_swap_places_every_other_repeat():
    running = [SimpleNamespace(spec=SimpleNamespace(name=name))
               for name in ("baseline", "server", "server-metrics", "workers")]

    def names(repeat):
        return [server.spec.name for server in metrics_cost.in_turns(running, repeat)]
    assert names(0) == names(2) == ["baseline", "server", "server-metrics", "workers"]
    assert names(1) == ["baseline", "server-metrics", "server", "workers"]


def test_in_process_cost_is_measured_both_ways():
    cost = metrics_cost.in_process_cost(rounds=2, calls=200)
    assert cost["us_per_call_with"] > 0 and cost["us_per_call_without"] > 0
    assert cost["us_added"] == pytest.approx(
        cost["us_per_call_with"] - cost["us_per_call_without"], abs=0.002)


def test_a_metrics_cost_run_leaves_the_full_runs_results_alone(monkeypatch, tmp_path, capsys):
    # The whole of run.run(), but for the servers and h2load: what a --metrics-cost run
    # measured, and where it writes it.
    from bench import run
    from bench.load import make_point
    from bench.report import add_ratios
    from test_bench import h2load_run

    def measured(name: str, requests: int) -> dict:
        return {"name": name, "label": name, "available": True, "reason": None, "note": "",
                "points": [make_point(50, h2load_run(requests, 4_000, 8_000), 2**25)],
                "requests_per_s_by_run": {"50": [requests / 5]},
                "cpu_us_per_request_by_run": {"50": [100.0]}}

    servers = [measured("bare", 50_000), measured("bare_yield", 60_000),
               measured("server", 54_000), measured("server-metrics", 53_000)]
    add_ratios(servers)
    monkeypatch.setattr(run, "BENCH", tmp_path)
    monkeypatch.setattr(run.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(run, "raise_fd_limit", lambda connections: None)
    monkeypatch.setattr(run, "measure_servers", lambda args, log_dir: servers)
    monkeypatch.setattr(metrics_cost, "in_process_cost", lambda: {
        "us_per_call_with": 4.0, "us_per_call_without": 3.0, "us_added": 1.0,
        "median_us_added": 1.1})
    plotted = []
    monkeypatch.setattr(run, "plot", lambda results, path: plotted.append(path))
    full_run = {name: f"the full run's {name}\n" for name in ("results.json", "results.png")}
    for name, text in full_run.items():
        (tmp_path / name).write_text(text)

    assert run.main(["--metrics-cost", "--connections", "50"]) == 0
    assert {name: (tmp_path / name).read_text() for name in full_run} == full_run
    written = json.loads((tmp_path / "results-metrics-cost.json").read_text())
    assert [server["name"] for server in written["servers"]] == [
        "bare", "bare_yield", "server", "server-metrics"]
    assert written["metrics_cost"]["estimated_cost_at_50"] == 0.0099
    assert plotted == []
    assert capsys.readouterr().out.endswith(
        f"\nwrote {tmp_path / 'results-metrics-cost.json'}\n")


def test_only_a_full_run_writes_bench_results_by_default(monkeypatch, tmp_path):
    from bench import run

    monkeypatch.setattr(run, "BENCH", tmp_path)
    full = run.parse_args([])
    assert (full.json, full.png) == (tmp_path / "results.json", tmp_path / "results.png")
    cost = run.parse_args(["--metrics-cost"])
    assert (cost.json, cost.png) == (tmp_path / "results-metrics-cost.json", None)
    told = run.parse_args(["--metrics-cost", "--json", "a.json", "--png", "a.png"])
    assert (told.json, told.png) == (Path("a.json"), Path("a.png"))

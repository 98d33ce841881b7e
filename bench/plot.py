"""The benchmark's plot (bench/results.png): req/s and p99 latency against connections, a line
per server. matplotlib, which `make bench` installs, is imported when a plot is drawn.
"""

from pathlib import Path

from bench.settings import LIMIT_SERVERS, QUERY


def plot(results: dict, path: Path) -> None:
    """Two panels against connections: req/s, and p99 latency (log scale); a line per server."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display is needed, or wanted, here
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(15, 5.4))
    # Enough colours for every row; the two limits are black and grey, dashed for eventlet's
    # and dotted for uvicorn's.
    colours = iter(plt.cm.tab20.colors)
    for server in results["servers"]:
        points = sorted(server["points"], key=lambda p: p["connections"])
        if not points:
            continue
        x = [p["connections"] for p in points]
        if server["name"] in (*LIMIT_SERVERS, "uvicorn", "uvicorn_workers"):
            style = {"color": "black" if server["name"] in ("bare", "uvicorn") else "grey",
                     "linestyle": "--" if server["name"] in LIMIT_SERVERS else ":"}
        else:
            style = {"color": next(colours)}
        throughput.plot(x, [p["requests_per_s"] for p in points], marker="o",
                        label=server["label"], **style)
        latency.plot(x, [p["p99_ms"] for p in points], marker="o", label=server["label"],
                     **style)
    connections = sorted({p["connections"] for s in results["servers"] for p in s["points"]})
    for axes, title, unit in ((throughput, "Throughput", "requests/s"),
                              (latency, "Latency, 99th percentile", "p99 (ms, log scale)")):
        axes.set_xscale("log")
        axes.set_xticks(connections)
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axes.set_xlabel("connections (log scale)")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    throughput.set_ylim(bottom=0)
    throughput.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    latency.set_yscale("log")
    latency.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    figure.legend(*throughput.get_legend_handles_labels(), loc="center right",
                  fontsize="small")
    machine = results["machine"]
    settings = results["settings"]
    runs = f", median of {settings['repeat']} runs" if settings["repeat"] > 1 else ""
    figure.suptitle(f"AvroEcho echo(\"{QUERY}\") under h2load: {machine['cores']} cores, "
                    f"{settings['seconds']} s per point{runs}, {machine['date'][:10]}")
    figure.tight_layout(rect=(0, 0, 0.76, 1))  # the legend on the right
    figure.savefig(path, dpi=100)
    plt.close(figure)

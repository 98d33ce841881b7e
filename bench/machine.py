"""The facts about the machine that the benchmark's results are saved with: its processor and
cores, its load when the run started, and the versions of what ran; and the note that a
busy machine makes the figures noisier.
"""

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

from bench.settings import ROOT


def first_line(command: list) -> Optional[str]:
    """The first line a command prints (a version, say), or None if it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0] if lines else None


def machine_facts() -> dict:
    model = None
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    avsc = None
    with contextlib.suppress(OSError, ValueError):
        avsc = json.loads((ROOT / "tests" / "interop" / "node_modules" / "avsc" /
                           "package.json").read_text())["version"]
    commit = first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    if commit and commit.startswith("fatal:"):  # not a clone: an exported tree, say
        commit = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": model,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "eventlet": importlib.metadata.version("eventlet"),
        "avro": importlib.metadata.version("avro"),
        "node": first_line(["node", "--version"]),
        "avsc": avsc,
        "h2load": first_line(["h2load", "--version"]),
        "uvicorn": _version("uvicorn"),
        "grpcio": _version("grpcio"),
        "commit": commit,
    }


def _version(package: str) -> Optional[str]:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(package)
    return None


def busy_machine_note(facts: dict) -> Optional[str]:
    """A warning when other work kept the machine busy before the run (the benchmark's own
    load shows in the load average at the end, so only the start says something)."""
    load = facts["load_average_at_start"][0]
    if facts["cores"] and load > facts["cores"] / 2:
        return (f"the machine was busy when the run started (load average {load:g} on "
                f"{facts['cores']} cores): the figures are noisier than usual; run it again "
                "when the machine is quiet")
    return None

"""The README shows what runs: its code excerpts are in the files, its demo is `make demo`."""

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, free_port

README = (ROOT / "README.md").read_text()
EXCERPTS = re.findall(r"<!-- excerpt: (\S+) -->\n```\w*\n(.*?)```", README, re.DOTALL)


def test_the_readme_has_excerpts_of_each_file():
    assert sorted({name for name, _ in EXCERPTS}) == ["client.py", "protocol.py", "server.py"]


@pytest.mark.parametrize("name, code", EXCERPTS, ids=[name for name, _ in EXCERPTS])
def test_each_excerpt_is_the_code_that_runs(name, code):
    assert code in (ROOT / name).read_text()


def normalize(transcript: str) -> list:
    transcript = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", "<time>", transcript)
    transcript = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", transcript)
    transcript = re.sub(r"took \d+\.\d{4} s", "took <seconds> s", transcript)
    return transcript.splitlines()


def test_make_demo_prints_what_the_readme_shows():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shown = re.search(r"```console\n\$ make demo\n(.*?)```", README, re.DOTALL).group(1)
    shown = shown.split("touch .venv/.runtime\n", 1)[1]  # the set-up lines of a first run
    port = free_port()
    # -o: the virtualenv is taken as made; the demo runs with this interpreter instead.
    result = subprocess.run(["make", "-s", "-o", ".venv/.runtime", "demo", f"PORT={port}",
                             f"PY={sys.executable}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert normalize(result.stdout + result.stderr) == normalize(shown)

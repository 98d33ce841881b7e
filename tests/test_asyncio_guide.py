"""docs/asyncio.md shows what runs: its commands, in its order, print what it shows (on free
ports, with the test's interpreter, and without the time stamps and timings)."""

import contextlib
import os
import re
import subprocess
import sys

from conftest import ROOT, free_port

GUIDE = (ROOT / "docs" / "asyncio.md").read_text()
# The guide's servers and clients: each console block up to "The async client", whose
# commands are the benchmark's.
BLOCKS = [(command, shown.splitlines()) for command, shown in re.findall(
    r"```console\n\$ \.venv/bin/python ([^\n]*)\n(.*?)```",
    GUIDE[:GUIDE.index("## The async client")], re.DOTALL)]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def normalize(lines: list, ports: dict) -> list:
    normalized = []
    for line in lines:
        line = TIMESTAMP.sub("", line)
        line = re.sub(r"\(took \d+\.\d+ s\)", "(took N s)", line)
        for shown, real in ports.items():
            line = line.replace(f":{real}/", f":{shown}/")
        normalized.append(line)
    return normalized


def test_the_guide_shows_its_servers_and_calls():
    assert [command.split()[0] for command, _ in BLOCKS] == [
        "server.py", "-m", "client.py", "-m", "-m"]


def test_each_command_of_the_guide_prints_what_it_shows():
    ports = {shown: str(free_port()) for shown in ("8130", "8131", "8132")}
    env = {**os.environ, "UPSTREAM": f"127.0.0.1:{ports['8130']}"}
    with contextlib.ExitStack() as servers:
        for command, shown in BLOCKS:
            arguments = command.split()
            if arguments[0] == "server.py" and "--port" not in arguments:
                arguments += ["--port", "8130"]  # the default port, made a free one
            arguments = [ports.get(argument, argument) for argument in arguments]
            arguments = [argument.strip('"') for argument in arguments]
            if "Hello World" in command:  # client.py's query, one argument
                arguments = arguments[:-2] + ["Hello World"]
            process = subprocess.Popen([sys.executable, *arguments], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True)
            servers.callback(stop, process)
            if "listening on" in shown[0]:  # a server: its start-up line, then it serves on
                printed = [process.stdout.readline().rstrip("\n")]
            else:  # a client, or a server that refuses to start
                printed = process.communicate(timeout=60)[0].splitlines()
            assert normalize(printed, ports) == normalize(shown, {}), command


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
    process.communicate(timeout=30)

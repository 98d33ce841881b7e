"""`python -m avrohttp serve MODULE:ATTR` (avrohttp.tools): on each loop, patched (or not)
before the module is imported, its one-line refusals, and --workers."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, server_program
from test_tools import answer

SERVE_ECHO = ("-m", "avrohttp", "serve", "server:EchoResponder")

# A service module for serve: what it saw of eventlet when it was imported, and when called.
PROBE_MODULE = """\
import json
import socket
import sys

import avrohttp
from avrohttp import cli
from protocol import EchoProtocol


def state():
    return {"eventlet": "eventlet" in sys.modules, "patched": socket.socket.__module__ != "socket"}


AT_IMPORT = state()


class ProbeResponder(avrohttp.Responder):
    def __init__(self):
        super().__init__(EchoProtocol)

    def handle_echo(self, query):
        return json.dumps({"at import": AT_IMPORT, "at call": state()})

    def handle_split(self, query):
        return query


def make_probe():
    return ProbeResponder()


def failing_factory():
    raise RuntimeError("no database")


def not_a_factory():
    return 42


a_responder = ProbeResponder()

if __name__ == "__main__":
    raise SystemExit(cli.main(ProbeResponder))
"""


@pytest.fixture
def modules(tmp_path, monkeypatch) -> Path:
    """A directory on the PYTHONPATH of the programs run, holding probe.py, broken.py (which
    fails at import) and bad_syntax.py."""
    (tmp_path / "probe.py").write_text(PROBE_MODULE)
    (tmp_path / "broken.py").write_text("import os\nLIMIT = 1 / 0\n")
    (tmp_path / "bad_syntax.py").write_text("def f(:\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{ROOT}")
    return tmp_path


# --- serve MODULE:ATTR ------------------------------------------------------------------------

def test_serve_a_module_on_each_loop(capsys, host):
    with server_program("--loop", host, program=SERVE_ECHO) as running:
        assert "AvroEcho server listening on http://127.0.0.1:" in running.startup_line
        url = f"http://127.0.0.1:{running.port}/"
        assert answer(capsys, url, "echo", '{"query": "Hello World"}') == "Hello World"
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(10) == 0


def test_serve_the_shop(capsys, host):
    program = ("-m", "avrohttp", "serve", "examples.shop.server:ShopResponder")
    with server_program("--loop", host, program=program) as running:
        url = f"http://127.0.0.1:{running.port}/"
        assert answer(capsys, url, "item", '{"sku": "boot"}')["name"] == "Walking boot"


@pytest.mark.parametrize("attribute", ["ProbeResponder", "make_probe"])
def test_the_module_is_imported_after_patching_for_eventlet_and_without_eventlet_for_asyncio(
        capsys, modules, host, attribute):
    with server_program("--loop", host, program=("-m", "avrohttp", "serve",
                                                  f"probe:{attribute}")) as running:
        seen = json.loads(answer(capsys, f"http://127.0.0.1:{running.port}/", "echo",
                                 '{"query": ""}'))
    on_eventlet = host == "eventlet"
    state = {"eventlet": on_eventlet, "patched": on_eventlet}
    assert seen == {"at import": state, "at call": state}


def test_a_program_that_calls_cli_main_unpatched_is_patched_for_eventlet(capsys, modules):
    with server_program(program=modules / "probe.py") as running:
        seen = json.loads(answer(capsys, f"http://127.0.0.1:{running.port}/", "echo",
                                 '{"query": ""}'))
    assert seen == {"at import": {"eventlet": False, "patched": False},
                    "at call": {"eventlet": True, "patched": True}}


FAILING_LINE = PROBE_MODULE.splitlines().index('    raise RuntimeError("no database")') + 1


# Each refusal on one loop, both loops in all: on eventlet, the module is imported after the
# patching, on asyncio without it.
REFUSALS = [
    ("server", "'server' is not MODULE:ATTR (server:EchoResponder, say)"),
    ("server:", "'server:' is not MODULE:ATTR (server:EchoResponder, say)"),
    ("no_such_module:Responder", "cannot import no_such_module: No module named "
                                 "'no_such_module'"),
    ("broken:Responder", "cannot import broken: ZeroDivisionError: division by zero "
                         "({dir}/broken.py, line 2)"),
    ("bad_syntax:Responder", "cannot import bad_syntax: invalid syntax ({dir}/bad_syntax.py, "
                             "line 1)"),
    ("probe:Nope", "probe has no attribute 'Nope' (its responders: ProbeResponder)"),
    ("probe:EchoProtocol", "probe:EchoProtocol is a Protocol: give a Responder class, or a "
                           "function of no arguments that returns a responder"),
    ("probe:state.__name__", "probe:state.__name__ is a str: give a Responder class, or a "
                             "function of no arguments that returns a responder"),
    ("server:application", "server:application is a function that takes arguments: give a "
                           "Responder class, or a function of no arguments that returns a "
                           "responder"),
    ("avrohttp:Client", "avrohttp:Client is the class Client: give a Responder class, or a "
                        "function of no arguments that returns a responder"),
    ("probe:a_responder", "probe:a_responder is a responder: give its class, or a function "
                          "that makes one (each worker of --workers makes its own)"),
    ("probe:failing_factory", "probe:failing_factory() failed: RuntimeError: no database "
                              f"({{dir}}/probe.py, line {FAILING_LINE})"),
    ("probe:not_a_factory", "probe:not_a_factory() returned an int, not a responder"),
]


@pytest.mark.parametrize("target, error, loop", [
    (target, error, ("eventlet", "asyncio")[n % 2]) for n, (target, error) in enumerate(REFUSALS)])
def test_serve_refuses_what_it_cannot_serve_in_one_line(modules, target, error, loop):
    result = subprocess.run(
        [sys.executable, "-m", "avrohttp", "serve", target, "--port", "0", "--loop", loop],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"python -m avrohttp serve: error: "
                             f"{error.format(dir=modules)}\n")


def test_serve_with_workers_runs_each_worker_as_the_same_command(capsys):
    with server_program("--workers", "2", "--loop", "asyncio", program=SERVE_ECHO) as running:
        assert "(2 workers)" in running.startup_line
        url = f"http://127.0.0.1:{running.port}/"
        assert answer(capsys, url, "split", '{"query": "Hello World"}') == "Hello"
        children = Path(f"/proc/{running.process.pid}/task/{running.process.pid}/children")
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:6]
                    for pid in children.read_text().split()]
        assert commands == [[b"-m", b"avrohttp", b"serve", b"server:EchoResponder", b"--port"]] * 2
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(20) == 0


def test_serve_takes_every_option_of_server_py():
    def options(program: list) -> set:
        result = subprocess.run([sys.executable, *program, "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        return set(re.findall(r"  (--[a-z-]+)", result.stdout))

    server_options = options(["server.py"])
    assert "--max-body-bytes" in server_options and "--loop" in server_options
    assert options(["-m", "avrohttp", "serve"]) == server_options

"""Interop: avsc, the Node.js implementation of Avro, calls server.py over HTTP, on each host
(--loop eventlet and --loop asyncio).

The Node side is tests/interop/avsc_client.js; `npm ci` in tests/interop installs avsc.
"""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import HOSTS, ROOT, server_program

INTEROP = ROOT / "tests" / "interop"

# The answers to the calls that avsc_client.js makes (the queries are in that script).
EXPECTED_ANSWERS = {
    "echo": "Hello World",
    "split": "Hello",
    "unicode_echo": "héllo 日本語 🎉",
    # Half of 11 characters: half of its 21 UTF-8 bytes or 12 UTF-16 units would differ.
    "unicode_split": "héllo",
    "empty_echo": "",
    "empty_split": "",
}


def run_avsc_client(port: int, variant: str) -> dict:
    """Run avsc_client.js (`same` or `evolved`) against a server on this port: its results."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the avsc interop tests need Node.js")
    if not (INTEROP / "node_modules" / "avsc").is_dir():
        pytest.skip("avsc is not installed: run `npm ci` in tests/interop")
    # The protocol lives only in protocol.py; the client reads it from there.
    protocol = subprocess.run([sys.executable, str(ROOT / "protocol.py")], capture_output=True,
                              text=True, check=True, timeout=60).stdout
    result = subprocess.run([node, "avsc_client.js", str(port), variant],
                            input=protocol, cwd=INTEROP, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"avsc_client.js {variant} failed:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module", params=HOSTS)
def server_port(request):
    """server.py running as a program on each host (--loop) for the module: its port."""
    with server_program("--loop", request.param) as running:
        yield running.port
        running.process.send_signal(signal.SIGTERM)


@pytest.fixture(scope="module", params=["same", "evolved"])
def avsc_results(request, server_port) -> dict:
    """avsc_client.js's results, once per variant, against the module's server."""
    return run_avsc_client(server_port, request.param)


def test_answers(avsc_results):
    # The evolved client's requests start with an extra boolean field, so these answers also
    # show that the server resolves the client's request schema against its own.
    answers = {key: avsc_results[key] for key in EXPECTED_ANSWERS}
    assert answers == EXPECTED_ANSWERS


def test_handshakes(avsc_results):
    # Even the `same` protocol is new to the server by hash (avsc hashes its JSON text, docs
    # and all), so the first call gets NONE and is resent with the protocol. From then on the
    # server knows the client's hash: every call, including that resend, is a BOTH.
    assert avsc_results["handshakes"] == ["NONE"] + ["BOTH"] * 6


def test_unknown_message_is_a_system_error(avsc_results):
    assert avsc_results["unknown"] == "Unknown message: shout"

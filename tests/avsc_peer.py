"""AvscPeer: tests/interop/avsc_peer.js (avsc, the Node.js implementation of Avro) as a
client of our server or a server for our client, one Node process for many jobs."""

import io
import json
import shutil
import subprocess

import avro.protocol
import pytest

import avrohttp
from avrohttp import codec
from avrohttp.requestor import error_reader_for
from conftest import ROOT
from protocols import decode

INTEROP = ROOT / "tests" / "interop"


class AvscPeer:
    """One JSON line to avsc_peer.js per job, one back: hundreds of jobs cost one Node
    start-up. Skips the test if Node.js or avsc is not installed."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.skip("node is not installed: the avsc interop tests need Node.js")
        if not (INTEROP / "node_modules" / "avsc").is_dir():
            pytest.skip("avsc is not installed: run `npm ci` in tests/interop")
        self.process = subprocess.Popen([node, "avsc_peer.js"], cwd=INTEROP, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(self, **job) -> dict:
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "avsc_peer.js stopped (see its stderr above)"
        answer = json.loads(line)
        assert "failure" not in answer, answer["failure"]
        return answer

    def close(self) -> None:
        self.process.stdin.close()  # the end of its jobs: it exits
        self.process.wait(timeout=10)
        self.process.stdout.close()


def outcome(message: avro.protocol.Message, result: dict) -> tuple:
    """An avsc call's result (its answer, in Avro binary): ("response", datum),
    ("declared", error type's name, datum) or ("system error", words)."""
    if "response" in result:
        return ("response", decode(message.response, bytes.fromhex(result["response"])))
    read = error_reader_for(message.errors, message.errors)
    error = read(codec.Decoder(io.BytesIO(bytes.fromhex(result["error"]))))
    if isinstance(error, avrohttp.DeclaredError):
        return ("declared", error.name, error.datum)
    return ("system error", error.message)

"""examples/api_key: a call hook that refuses every call without a known API key, with the
error that each message declares, so that no handler runs for it; on each host through real
sockets, and as programs (`python examples/api_key/server.py`, `.../client.py`)."""

import http.client
import json
import os
import re
import subprocess
import sys

import pytest

import avrohttp
from conftest import ROOT, server_program, serving
from examples.api_key import client as notes_client, server as notes_server
from examples.api_key.protocol import PROTOCOL_JSON
from wire import call_head, frame, handshake_request, read_answer

NOTES = avrohttp.parse_protocol(PROTOCOL_JSON)
KEYS = {"ada": b"key-of-ada", "grace": b"key-of-grace"}
KEYS_FILE = "# Test keys\n\nada key-of-ada\n  grace   key-of-grace  \n"


class CountingNotes(notes_server.NotesResponder):
    """The example's responder, counting the handlers that ran."""

    ran = 0

    def handle_add(self, text: str) -> int:
        self.ran += 1
        return super().handle_add(text)

    def handle_notes(self) -> list:
        self.ran += 1
        return super().handle_notes()


@pytest.fixture
def notes(host):
    """A Notes server of each host that knows KEYS: yields (responder, address)."""
    responder = CountingNotes(notes_server.ApiKeys(KEYS))
    with serving(responder, host) as address:
        yield responder, address


def client_of(address, key=None) -> avrohttp.Client:
    hooks = [] if key is None else [notes_client.SendApiKey(key)]
    return avrohttp.Client(PROTOCOL_JSON, *address, timeout=5, call_hooks=hooks)


def test_each_key_holder_has_their_own_notes(notes):
    responder, address = notes
    with client_of(address, "key-of-ada") as ada, client_of(address, "key-of-grace") as grace:
        assert ada.call("add", text="one") == 1
        assert grace.call("add", text="mine") == 1
        assert ada.call("add", text="two") == 2
        assert ada.call("notes") == ["one", "two"]
        assert grace.call("notes") == ["mine"]
    assert responder.ran == 5


@pytest.mark.parametrize("key, reason", [
    (None, "no api-key was sent"),
    ("key-of-eve", "unknown api-key"),
    ("key-of-ad", "unknown api-key"),  # the start of a known key
    ("", "unknown api-key"),
])
def test_a_call_without_a_known_key_is_refused_and_no_handler_runs(notes, key, reason):
    responder, address = notes
    with client_of(address, key) as caller:
        for message, parameters in (("add", {"text": "sneaked in"}), ("notes", {})):
            with pytest.raises(avrohttp.DeclaredError) as raised:
                caller.call(message, **parameters)
            assert (raised.value.name, raised.value.datum) == ("AccessDenied",
                                                               {"reason": reason})
    assert responder.ran == 0
    assert dict(responder.notes) == {}


def test_the_keys_file_is_read_and_a_bad_one_is_refused(tmp_path):
    path = tmp_path / "keys"
    path.write_text(KEYS_FILE)
    assert notes_server.read_keys(str(path)) == KEYS
    path.write_text("ada key-of-ada\nonly-a-name\n")
    with pytest.raises(ValueError, match=r"keys, line 2: not `name key`$"):
        notes_server.read_keys(str(path))
    path.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match=r"keys holds no keys$"):
        notes_server.read_keys(str(path))


def test_without_a_keys_file_the_server_takes_the_demo_key_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv(notes_server.KEYS_FILE_ENV, raising=False)
    keys = notes_server.load_keys()
    assert keys.holder(notes_client.DEMO_KEY.encode()) == "demo"
    assert caplog.messages == ["no API_KEYS_FILE: serving with the demo key, which is no secret"]


def run_client(port: int, key=None, *args: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "API_KEY"}
    if key is not None:
        env["API_KEY"] = key
    return subprocess.run([sys.executable, "examples/api_key/client.py", "--port", str(port),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


SERVER = ROOT / "examples" / "api_key" / "server.py"


@pytest.mark.parametrize("loop", ["eventlet", "asyncio"])
def test_the_programs_with_a_keys_file(loop, tmp_path, monkeypatch):
    (tmp_path / "keys").write_text(KEYS_FILE)
    monkeypatch.setenv(notes_server.KEYS_FILE_ENV, str(tmp_path / "keys"))
    with server_program("--loop", loop, program=SERVER) as running:
        ada = run_client(running.port, "key-of-ada", "Call Grace")
        refused = run_client(running.port, "key-of-nobody")
        demo = run_client(running.port)
        again = run_client(running.port, "key-of-ada")
    assert (ada.returncode, ada.stdout, ada.stderr) == (
        0, "Added a note: you have 1.\n- Call Grace\n", "")
    for result in refused, demo:
        assert (result.returncode, result.stdout, result.stderr) == (
            1, "", "error: access denied: unknown api-key\n")
    assert again.stdout == "Added a note: you have 2.\n- Call Grace\n- Buy milk\n"


def test_the_programs_with_the_demo_key(monkeypatch):
    monkeypatch.delenv(notes_server.KEYS_FILE_ENV, raising=False)
    with server_program(program=SERVER) as running:
        result = run_client(running.port)
    assert (result.returncode, result.stdout) == (0, "Added a note: you have 1.\n- Buy milk\n")


def test_the_client_prints_what_the_doc_shows(monkeypatch):
    doc = (ROOT / "docs" / "your-protocol.md").read_text()
    shown = re.search(r'```console\n\$ \.venv/bin/python examples/api_key/client.py "Buy milk"\n'
                      r"(.*?)\$ API_KEY=guessed \.venv/bin/python examples/api_key/client.py\n"
                      r"(.*?)```", doc, re.DOTALL).groups()
    monkeypatch.delenv(notes_server.KEYS_FILE_ENV, raising=False)
    with server_program(program=SERVER) as running:
        added = run_client(running.port, None, "Buy milk")
        refused = run_client(running.port, "guessed")
    assert (added.stdout, refused.stderr) == shown


def test_a_ping_and_a_message_the_server_lacks_are_not_guarded(notes):
    # A newer client, with a message that this server lacks, and no key: it is told that
    # the message is unknown, as any caller would be, before any hook could refuse it.
    newer = json.loads(PROTOCOL_JSON)
    newer["messages"]["forget"] = {"request": [], "response": "null"}
    with avrohttp.Client(json.dumps(newer), *notes[1], timeout=5) as caller:
        with pytest.raises(avrohttp.RemoteSystemError) as raised:
            caller.call("forget")
    assert raised.value.message == "Unknown message: forget"
    # A ping, the empty message name: the handshake alone answers it.
    ping = frame(handshake_request(NOTES, server_hash=NOTES.md5) + call_head(""))
    connection = http.client.HTTPConnection(*notes[1], timeout=10)
    connection.request("POST", "/", ping, {"Content-Type": "avro/binary"})
    answer = read_answer(connection.getresponse().read(), protocol=NOTES)
    connection.close()
    assert (answer.handshake["match"], answer.has_call_response) == ("BOTH", False)


def test_the_server_with_a_keys_file_it_cannot_read_says_so_in_one_line(tmp_path):
    missing = tmp_path / "missing"
    result = subprocess.run([sys.executable, str(SERVER), "--port", "0"], cwd=ROOT,
                            env={**os.environ, notes_server.KEYS_FILE_ENV: str(missing)},
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (
        1, f"cannot serve: API_KEYS_FILE: cannot read {missing}: No such file or directory\n")


def test_the_client_without_a_server_says_so(capsys):
    from conftest import free_port
    assert notes_client.main(["--port", str(free_port())]) == 1
    assert "cannot reach the server" in capsys.readouterr().err


"""The tutorial: README.md shows what runs. Its code excerpts are in the files, its commands
print what it shows, and its "Add a message" steps work on a copy of the repository.

The commands run with this test's interpreter in place of `.venv/bin/python` (the same one
under `make test`), and on a free port rather than 8130: `--port` is added to the server's and
the client's command lines, and `EchoClient()` is given the port.
"""

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import client
import server
import avrohttp
import avrohttp.hosting
from conftest import HOSTS, ROOT, free_port, server_program, serving
from protocol import PROTOCOL_JSON

README = (ROOT / "README.md").read_text()
EXCERPT = re.compile(r"<!-- excerpt: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
EXCERPTS = EXCERPT.findall(README)  # docs/'s are checked by test_docs.py
INSERT = re.compile(r"<!-- insert into (\S+) (before|after): (.*?) -->\n```\w*\n(.*?)```",
                    re.DOTALL)
CONSOLE = re.compile(r"```console\n(.*?)```", re.DOTALL)
PYTHON = ".venv/bin/python"


def console_blocks(text: str) -> list:
    """Each console block as a list of (command, the lines it prints)."""
    blocks = []
    for block in CONSOLE.findall(text):
        steps = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


def normalize(lines: list, port: int = 8130) -> list:
    text = "\n".join(lines).replace(sys.executable, PYTHON)
    text = re.sub(rf"--port ({port}|8130)\b", "--port <port>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", "<time>", text)
    text = re.sub(rf"127\.0\.0\.1:({port}|8130)\b", "127.0.0.1:<port>", text)
    text = re.sub(r"took \d+\.\d{4} s", "took <seconds> s", text)
    return text.splitlines()


def run(command: str, cwd: Path = ROOT, port: int = None) -> list:
    """Run a command shown in the README; the lines it prints (stdout, then stderr)."""
    command = command.replace(PYTHON, sys.executable, 1)
    if port is not None and " client.py " in f" {command} " and "--port" not in command:
        command += f" --port {port}"
    command = command.replace("EchoClient()", f"EchoClient(port={port})")
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    return (result.stdout + result.stderr).splitlines()


def test_the_readme_has_excerpts_of_each_tutorial_file():
    assert {name for name, _ in EXCERPTS} == {
        "client.py", "protocol.py", "server.py", "examples/shop/client.py",
        "examples/shop/server.py"}


@pytest.mark.parametrize("name, code", EXCERPTS, ids=[name for name, _ in EXCERPTS])
def test_each_excerpt_is_the_code_that_runs(name, code):
    assert code in (ROOT / name).read_text()


def test_make_demo_prints_what_the_readme_shows():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    [demo] = [steps for steps in console_blocks(README) if steps[0][0] == "make demo"]
    shown = [line for command, lines in demo for line in
             ([] if command == "make demo" else [f"$ {command}"]) + lines]
    shown = shown[shown.index("touch .venv/.runtime") + 1:]  # a first run's set-up lines
    port = free_port()
    # -o: the virtualenv is taken as made; the demo runs with this interpreter instead.
    result = subprocess.run(["make", "-s", "-o", ".venv/.runtime", "demo", f"PORT={port}",
                             f"PY={sys.executable}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert normalize((result.stdout + result.stderr).splitlines(), port) == normalize(shown)


def test_the_two_terminals_print_what_the_readme_shows():
    server_block, *client_blocks = [
        steps for steps in console_blocks(README)
        if steps[0][0].startswith(f"{PYTHON} server.py") or steps[0][0].startswith(
            f"{PYTHON} client.py")]
    [(command, shown)] = server_block
    port = free_port()
    server = subprocess.Popen([*shlex.split(command.replace(PYTHON, sys.executable)),
                               "--port", str(port)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert normalize([server.stderr.readline().rstrip("\n")], port) == normalize(shown)
        assert len(client_blocks) == 2
        for [(command, shown)] in client_blocks:
            refused = re.search(r"--port (\d+)", command)
            if refused:  # a port where nothing listens: any free one will do
                closed = free_port()
                command = command.replace(refused.group(0), f"--port {closed}")
                shown = [line.replace(f":{refused.group(1)}:", f":{closed}:") for line in shown]
            assert normalize(run(command, port=port), port) == normalize(shown)
    finally:
        server.terminate()
        server.communicate(timeout=10)


def test_add_a_message_works_as_the_readme_says(tmp_path):
    inserts = INSERT.findall(README)
    assert [name for name, *_ in inserts] == ["protocol.py", "server.py", "client.py"]
    for name in ("protocol.py", "server.py", "client.py", "avrohttp"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    for name, where, anchor, code in inserts:
        lines = (tmp_path / name).read_text().splitlines(keepends=True)
        [at] = [n for n, line in enumerate(lines) if line.strip() == anchor]
        lines.insert(at if where == "before" else at + 1, code)
        (tmp_path / name).write_text("".join(lines))
    [steps] = [steps for steps in console_blocks(README) if "reverse" in steps[0][0]]
    [(command, shown)] = steps
    port = free_port()
    server = subprocess.Popen([sys.executable, "server.py", "--port", str(port)],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in server.stderr.readline()
        assert run(command, cwd=tmp_path, port=port) == shown == ["dlroW olleH"]
    finally:
        server.terminate()
        server.communicate(timeout=10)


@pytest.fixture(scope="module", params=HOSTS)
def server_process(request):
    """server.py running as a program on each host (--loop) for the module: its port."""
    with server_program("--loop", request.param) as running:
        yield running.port
        running.process.send_signal(signal.SIGTERM)


def test_a_client_whose_output_is_cut_short_exits_quietly(server_process):
    query = "x" * 100_000
    client = subprocess.Popen(
        [sys.executable, "client.py", "--port", str(server_process), "--echo", "--split",
         "--query", query], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdout.read(10) == b">>> Echo: "  # as `| head -c 10` would read
    client.stdout.close()
    with client.stderr:
        assert client.stderr.read() == b""
    assert client.wait(timeout=30) == 1


def test_server_help_lists_every_option():
    result = subprocess.run([sys.executable, "server.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    options = re.findall(r"^  (--[a-z-]+)", result.stdout, re.MULTILINE)
    assert options == ["--loop", "--host", "--port", "--certfile", "--keyfile", "--client-ca",
                       "--workers", "--max-body-bytes", "--request-timeout", "--idle-timeout",
                       "--max-connections", "--drain-timeout", "--shutdown-delay",
                       "--max-connection-age", "--access-log", "--metrics"]
    # Which loop serves when none is given: the tutorial's eventlet.
    assert "(default: eventlet)" in " ".join(result.stdout.split())


# client.py and protocol.py as programs.

TOOK = re.compile(r"\(took \d+\.\d{4} s\)")


def run_program(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("flags, expected", [
    (["--echo", "--query", "Hello World"], [">>> Echo: Hello World"]),
    (["-e", "-q", "Hello World"], [">>> Echo: Hello World"]),
    (["--split", "--query", "Hello World"], [">>> Split: Hello"]),
    (["-s", "-q", "héllo wörld!"], [">>> Split: héllo "]),
    (["-e", "-s", "-q", "Hello World"], [">>> Echo: Hello World", ">>> Split: Hello"]),
])
def test_client_prints_the_answer_and_the_time(server_process, flags, expected):
    result = run_program("client.py", "--port", str(server_process), *flags)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0::2] == expected
    assert all(TOOK.fullmatch(line) for line in lines[1::2]), lines


@pytest.mark.parametrize("flags, message", [
    ([], "client.py: error: the following arguments are required: -q/--query (see --help)"),
    (["-q", "hi"], "client.py: error: choose a message: --echo, --split, or both (see --help)"),
    (["-e", "-q", "hi", "--port", "x"],
     "client.py: error: argument --port: invalid int value: 'x' (see --help)"),
    (["-e", "-q", "hi", "--port", "99999"],
     "client.py: error: argument --port: 99999 is not a port number (1 to 65535) (see --help)"),
    (["-e", "-q", "hi", "--timeout", "0"], "client.py: error: argument --timeout: "
     "must be more than 0 seconds, and at most a day (see --help)"),
    (["-e", "-q", "hi", "--timeout", "1e300"], "client.py: error: argument --timeout: "
     "must be more than 0 seconds, and at most a day (see --help)"),
    (["-e", "-q", "hi", "--connect-timeout", "nan"], "client.py: error: argument "
     "--connect-timeout: must be more than 0 seconds, and at most a day (see --help)"),
    (["-e", "-q", "\udcff"], "client.py: error: argument -q/--query: not valid UTF-8 (see --help)"),
])
def test_client_usage_errors_are_one_line(flags, message):
    result = run_program("client.py", *flags)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n")


def test_client_says_in_one_line_when_the_server_is_unreachable():
    port = free_port()
    result = run_program("client.py", "--port", str(port), "-e", "-q", "hi")
    assert result.returncode == 1
    assert result.stderr == (f"client.py: error: cannot reach the server at 127.0.0.1:{port}: "
                             "[Errno 111] Connection refused\n")


def test_client_says_in_one_line_when_the_server_does_not_answer_in_time():
    # Accepts (via the backlog) but never answers.
    with avrohttp.hosting.listen("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        result = run_program("client.py", "--port", str(port), "--timeout", "0.3", "-e", "-q",
                             "hi")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"client.py: error: the server at 127.0.0.1:{port} sent no answer "
                             "within 0.3 s\n")


def test_client_says_in_one_line_when_the_server_answers_with_an_avro_error(host, capsys):
    class Failing(server.EchoResponder):
        def handle_split(self, query):
            raise RuntimeError("boom")

    with serving(Failing(), host) as (host, port):
        status = client.main(["--port", str(port), "-e", "-s", "-q", "Hello World"])
    out, err = capsys.readouterr()
    assert status == 1
    assert out.splitlines()[0] == ">>> Echo: Hello World"
    assert err == "client.py: error: the server answered: Internal error in split\n"


def test_protocol_py_prints_the_protocol_json_with_its_docs():
    result = run_program("protocol.py")
    assert result.returncode == 0
    printed = json.loads(result.stdout)
    assert printed == json.loads(PROTOCOL_JSON)
    assert printed["doc"] and all(m["doc"] for m in printed["messages"].values())


IMPORT_SERVER = """
import json, logging, os, select, signal, socket, ssl, sys, threading, time, warnings
import avro.io

def sockets():
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed since
            pass
    return sorted(link for link in links if link.startswith("socket:"))

def state():
    return {
        "patched": [repr(x) for x in (socket.socket, socket.create_connection, ssl.SSLContext,
                                      select.select, threading.Thread, time.sleep)],
        "threads": threading.active_count(),
        "sockets": sockets(),
        "signals": [repr(signal.getsignal(signum)) for signum in
                    (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)],
        "logging": [logging.root.level, repr(logging.root.handlers)],
        "warnings": repr(warnings.filters),
        "avro.io.DEFAULT_MAX_COLLECTION_ITEMS": avro.io.DEFAULT_MAX_COLLECTION_ITEMS,
    }

before = state()
import server
after = state()
print(json.dumps({"changed": sorted(key for key in before if before[key] != after[key]),
                  "eventlet imported": "eventlet" in sys.modules}))
"""


def test_importing_server_starts_nothing_and_patches_nothing():
    # README.md: only cli.main, when it serves on eventlet, monkey-patches the standard
    # library. Importing server.py starts no thread and opens no socket either; the one
    # thing it changes is avro's limit on zero-byte items, which make_application lowers
    # (tests/avrohttp/test_package.py).
    result = subprocess.run([sys.executable, "-W", "error", "-c", IMPORT_SERVER], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert json.loads(result.stdout) == {
        "changed": ["avro.io.DEFAULT_MAX_COLLECTION_ITEMS"], "eventlet imported": False}

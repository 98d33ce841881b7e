"""The package installs on its own (pyproject.toml): avrohttp, and none of the tutorial. With
pip's own resolution, from the package index, into clean virtualenvs: `pip install avrohttp`
brings avro alone, which is enough for the clients, the WSGI application and `python -m
avrohttp describe` and `call`; serving without a host's extra (or --metrics without its own)
says in one line which extra to install; and with the extras, serving works.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator, List

import pytest

import avrohttp
from conftest import ROOT, log_messages

# What each extra brings that avrohttp imports: none of it may come with the package alone.
EXTRA_MODULES = ("eventlet", "greenlet", "prometheus_client", "uvicorn", "httptools", "uvloop",
                 "opentelemetry")

# A service of its own, in the virtualenv's working directory: nothing of the clone's.
SERVICE = '''\
import avrohttp

PROTOCOL = """{"protocol": "Echo", "namespace": "test.install", "messages": {"echo": {
    "request": [{"name": "query", "type": "string"}], "response": "string"}}}"""


class EchoResponder(avrohttp.Responder):
    def __init__(self):
        super().__init__(PROTOCOL)

    def handle_echo(self, query):
        return query
'''

# Run in the virtualenv without extras: the WSGI application on the standard library's own
# server (wsgiref), a Client's call, and the command-line tools' describe and call.
CALL_OVER_WSGIREF = '''\
import contextlib, io, json, sys, threading, wsgiref.simple_server
import avrohttp, avrohttp.tools
from svc import PROTOCOL, EchoResponder


class Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


server = wsgiref.simple_server.make_server(
    "127.0.0.1", 0, avrohttp.make_application(EchoResponder()), handler_class=Quiet)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/"
with avrohttp.Client(PROTOCOL, "127.0.0.1", server.server_address[1]) as client:
    answers = [client.call("echo", query="Hi"), client.call("echo", query="again")]


def tool(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = avrohttp.tools.main(list(argv))
    return status, json.loads(out.getvalue())


print(json.dumps({
    "answers": answers,
    "call": tool("call", url, "echo", '{"query": "Ho"}'),
    "describe": tool("describe", url)[1]["protocol"],
    "names": [avrohttp.AsyncClient.__name__, avrohttp.Responder.__name__,
              avrohttp.make_asgi_application.__name__],
    "imported": sorted(name for name in sys.modules if name.split(".")[0] in sys.argv[1:]),
}))
'''


class Venv:
    """A clean virtualenv (no system site-packages) and a working directory with svc.py."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.work = path / "work"
        self.work.mkdir(parents=True)
        (self.work / "svc.py").write_text(SERVICE)
        subprocess.run([sys.executable, "-m", "venv", str(path / "env")], check=True,
                       timeout=120)
        self.python = str(path / "env" / "bin" / "python")
        # Nothing of the test's own environment: no PYTHONPATH to the clone.
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith("PYTHON")}

    def pip_install(self, requirement: str) -> None:
        """pip's own resolution, from the package index: no --no-deps."""
        subprocess.run([self.python, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", requirement],
                       check=True, timeout=300, env=self.env, capture_output=True)

    def installed(self) -> List[str]:
        listed = subprocess.run([self.python, "-m", "pip", "list", "--format=json",
                                 "--disable-pip-version-check"], check=True, timeout=60,
                                env=self.env, capture_output=True, text=True).stdout
        # pip and setuptools come with the virtualenv itself.
        return sorted(package["name"].lower().replace("_", "-") for package in json.loads(listed)
                      if package["name"] not in ("pip", "setuptools"))

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, *args], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def requires(self, package: str) -> List[str]:
        shown = self.run("-m", "pip", "show", "--disable-pip-version-check", package).stdout
        listed = re.search(r"^Requires:(.*)$", shown, re.MULTILINE).group(1)
        return sorted(name.strip().lower().replace("_", "-") for name in listed.split(",")
                      if name.strip())


@contextlib.contextmanager
def serving(venv: Venv, *args: str) -> Iterator[int]:
    """`python -m avrohttp serve svc:EchoResponder` in the virtualenv, on a free port, until
    the end of the block: yields the port. It must then stop gracefully (exit status 0)."""
    process = subprocess.Popen(
        [venv.python, "-m", "avrohttp", "serve", "svc:EchoResponder", "--port", "0", *args],
        cwd=venv.work, env=venv.env, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        match = re.search(r"Echo server listening on http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        yield int(match.group(1))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def call_echo(venv: Venv, port: int, query: str) -> str:
    """echo(query), called from this process with the service's own protocol."""
    protocol = venv.run("-c", "import svc; print(svc.PROTOCOL)").stdout
    with avrohttp.Client(protocol, "127.0.0.1", port) as client:
        return client.call("echo", query=query)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The package as a clone holds it, copied: pip builds it where it lies."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "avrohttp", source / "avrohttp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    return source


@pytest.fixture(scope="module")
def bare(source, tmp_path_factory) -> Venv:
    """`pip install avrohttp`, without extras."""
    venv = Venv(tmp_path_factory.mktemp("bare"))
    venv.pip_install(str(source))
    return venv


def test_pip_installs_the_package_alone(source, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, timeout=300)
    installed = sorted(path.name for path in target.iterdir() if path.suffix != ".dist-info")
    assert installed == ["avrohttp"]
    assert sorted(path.name for path in (target / "avrohttp").glob("*.py")) == sorted(
        path.name for path in (ROOT / "avrohttp").glob("*.py"))
    # Imported from where it was installed, away from the clone.
    found = subprocess.run(
        [sys.executable, "-c", "import avrohttp, sys; print(avrohttp.__file__); "
         "print('eventlet' in sys.modules)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True,
        text=True, check=True, timeout=60).stdout.splitlines()
    assert found == [str(target / "avrohttp" / "__init__.py"), "False"]


def test_the_package_alone_brings_avro_and_what_avro_needs(bare):
    assert bare.installed() == sorted(["avrohttp", "avro", *bare.requires("avro")])
    found = bare.run("-c", "import importlib.util, sys; print([name for name in sys.argv[1:] "
                     "if importlib.util.find_spec(name)])", *EXTRA_MODULES)
    assert found.stdout == "[]\n", found.stderr


def test_the_package_alone_calls_over_any_wsgi_server(bare):
    ran = bare.run("-c", CALL_OVER_WSGIREF, *EXTRA_MODULES)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {
        "answers": ["Hi", "again"], "call": [0, "Ho"], "describe": "Echo",
        "names": ["AsyncClient", "Responder", "make_asgi_application"], "imported": []}
    # From the installed package, not the clone's.
    where = bare.run("-c", "import avrohttp; print(avrohttp.__file__)").stdout
    assert where.startswith(str(bare.path / "env")) and not where.startswith(str(ROOT))


@pytest.mark.parametrize("args, extra, needs", [
    ((), "eventlet", "the eventlet host needs eventlet"),
    (("--loop", "eventlet", "--metrics"), "eventlet", "the eventlet host needs eventlet"),
    (("--loop", "asyncio"), "asyncio", "the asyncio host needs uvicorn"),
    (("--workers", "2"), "eventlet", "the eventlet host needs eventlet"),
])
def test_serving_without_the_host_says_which_extra_to_install(bare, args, extra, needs):
    ran = bare.run("-m", "avrohttp", "serve", "svc:EchoResponder", "--port", "0", *args)
    assert (ran.returncode, ran.stdout) == (1, "")
    assert log_messages(ran.stderr) == [
        f"avrohttp cannot serve: {needs}: pip install 'avrohttp[{extra}]'"]


def test_importing_a_host_without_its_extra_names_the_extra(bare):
    for module, message in (
            ("avrohttp.serve", "the eventlet host needs eventlet: pip install "
                               "'avrohttp[eventlet]'"),
            ("avrohttp.serve_asyncio", "the asyncio host needs uvicorn: pip install "
                                       "'avrohttp[asyncio]'"),
            ("avrohttp.metrics", "avrohttp.metrics (--metrics) needs prometheus_client: "
                                 "pip install 'avrohttp[metrics]'")):
        ran = bare.run("-c", f"import {module}")
        assert ran.returncode == 1
        assert ran.stderr.splitlines()[-1] == f"avrohttp.extras.MissingExtra: {message}"


def test_the_extras_bring_what_serving_needs(source, tmp_path):
    venv = Venv(tmp_path)
    venv.pip_install(f"{source}[eventlet]")
    assert {"eventlet", "greenlet"} <= set(venv.installed())
    assert not {"prometheus-client", "uvicorn"} & set(venv.installed())
    ran = venv.run("-m", "avrohttp", "serve", "svc:EchoResponder", "--port", "0", "--metrics")
    assert (ran.returncode, log_messages(ran.stderr)) == (1, [
        "avrohttp cannot serve: avrohttp.metrics (--metrics) needs prometheus_client: "
        "pip install 'avrohttp[metrics]'"])

    venv.pip_install(f"{source}[eventlet,metrics]")
    assert "prometheus-client" in venv.installed()
    with serving(venv, "--metrics") as port:
        assert call_echo(venv, port, "served") == "served"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            scraped = answer.read().decode()
    counted = r'^avro_server_calls_total\{message="echo",outcome="answered"\} 1\.0$'
    assert re.search(counted, scraped, re.MULTILINE), scraped


def test_all_brings_every_extra(source, tmp_path):
    venv = Venv(tmp_path)
    venv.pip_install(f"{source}[all]")
    # eventlet warns on import that it is deprecated (README.md, "eventlet's status").
    ran = venv.run("-c", "import warnings\nwarnings.simplefilter('ignore')\n"
                   "import avrohttp.serve, avrohttp.serve_asyncio, avrohttp.metrics, "
                   "avrohttp.tracing\nfrom avrohttp import extras\n"
                   "for extra in extras.EXTRAS:\n    extras.require(extra)")
    assert (ran.returncode, ran.stderr) == (0, "")
    assert {"eventlet", "uvicorn", "httptools", "uvloop", "prometheus-client",
            "opentelemetry-api"} <= set(venv.installed())
    with serving(venv, "--loop", "asyncio") as port:
        assert call_echo(venv, port, "on asyncio") == "on asyncio"

"""The parts of a rolling update on this machine: replicas that come and go, and nginx in
front of whichever of them are in its list at the moment, as an ingress controller keeps it.

A Replica is one server.py, as a pod is: in a network namespace with an address of its own
(deploy/netns.py) when this machine allows it, on a loopback port of its own otherwise. A
new replica always has a new address, as a new pod does.

The Balancer is nginx with deploy/nginx.conf, run from a temporary directory on a free port,
as deploy/fleet.py runs it; route() rewrites its list of servers and reloads it (`nginx -s
reload`), and waits until the new configuration answers. It picks a replica for each call,
as an ingress does. deploy/stream.py has the other kind, which picks one for each connection.
"""

import http.client
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import List, NamedTuple, Optional

from deploy import processes
from deploy.fleet import CONFIG
from deploy.netns import Subnet
from deploy.processes import HOST, FleetError, free_port, nginx_program

POD_PORT = 8130  # in a namespace, every replica listens on the same port, as pods do
RELOAD_SECONDS = 10.0  # for nginx to answer with a new configuration
# The harness's own page in the rendered configuration: which configuration answers.
GENERATION_PATH = "/rollout/generation"


def get(host: str, port: int, path: str, timeout: float = 2.0) -> int:
    """GET path: the status, or 0 if no answer came."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


class Replica:
    """One server.py, started with `options` (besides its address), its log in a file."""

    def __init__(self, number: int, directory: Path, options: List[str],
                 subnet: Optional[Subnet]) -> None:
        self.number = number
        self.subnet = subnet
        self.host = subnet.address if subnet else HOST
        self.port = POD_PORT if subnet else free_port()
        self.log = directory / f"replica-{number}.log"
        self.options = options
        self.process: Optional[subprocess.Popen] = None
        self.terminated_at = 0.0
        self.exited_at: Optional[float] = None  # once terminated and exited

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "server.py", "--host", self.host, "--port", str(self.port),
                *self.options]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.subnet.command(argv) if self.subnet else argv,
                cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)

    def ready(self) -> bool:
        return get(self.host, self.port, "/health/ready", timeout=1.0) == 200

    def wait_until_ready(self) -> None:
        """Poll GET /health/ready until it answers 200, as a readiness probe does."""
        processes.wait_for(self.ready, self.process, f"server.py at {self.address}", self.log)

    def terminate(self) -> None:
        """SIGTERM to the server's process alone, as Kubernetes sends it to a container's
        first process; with --workers, the supervisor passes it on."""
        self.terminated_at = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        threading.Thread(target=self._note_exit, daemon=True).start()

    def _note_exit(self) -> None:
        self.process.wait()
        self.exited_at = time.monotonic()

    def wait(self, timeout: float) -> Optional[int]:
        """The exit code, once the process has exited; None if it is still running."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop it (and its workers) if it is still running, and remove its namespace."""
        processes.stop(self.process)
        if self.subnet:
            self.subnet.delete()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def render(text: str, port: int, addresses: List[str], generation: int) -> str:
    """deploy/nginx.conf with nginx on `port`, balancing `addresses` ("host:port"), with the
    same parameters as its first server line, and GENERATION_PATH answering `generation`."""
    server_line = re.compile(rf"^([ \t]*)server {re.escape(HOST)}:\d+([^;\n]*);\n", re.MULTILINE)
    lines = list(server_line.finditer(text))
    if not lines or not addresses:
        raise ValueError("need server lines in the configuration, and addresses to put there")
    indent, parameters = lines[0].group(1), lines[0].group(2)
    servers = "".join(f"{indent}server {address}{parameters};\n" for address in addresses)
    text = (text[:lines[0].start()] + servers
            + server_line.sub("", text[lines[0].end():]))
    listen = re.compile(rf"^([ \t]*)listen {re.escape(HOST)}:\d+;", re.MULTILINE)
    text, count = listen.subn(
        lambda match: f"{match.group(1)}listen {HOST}:{port};\n"
                      f"{match.group(1)}location = {GENERATION_PATH} "
                      f"{{ return 200 \"{generation}\"; }}", text)
    if count != 1:
        raise ValueError(f"expected one listen line on {HOST}, found {count}")
    return text


class Window(NamedTuple):
    """The calls answered between two moments, as the balancer (HTTP) or the replicas' own
    access logs (TCP) count them."""
    answered: Counter  # calls answered (200) by each replica's address
    # Calls sent again: by nginx to another replica (HTTP); by the clients, on a new
    # connection, after the old one was closed (TCP: nginx sees no calls).
    retried: int
    errors: Optional[int]  # calls that nginx answered with an error of its own (HTTP only)


# One Avro call in deploy/nginx.conf's log format: its status, and every replica it went to.
CALL_LINE = re.compile(r'"POST [^"]*" (\d{3}) \d+ upstream=(.*?) upstream_status=')


class Nginx:
    """nginx run from `directory` on a free port, in front of a list of replicas that
    route() changes. A subclass writes the configuration (_render) and says whether the
    latest one answers (_current)."""

    def __init__(self, directory: Path) -> None:
        self.nginx = nginx_program()
        if self.nginx is None:
            raise FleetError("nginx is not installed (Debian: apt-get install nginx)")
        self.dir = directory
        self.port = free_port()
        self.generation = 0
        self.process: Optional[subprocess.Popen] = None

    def _render(self, addresses: List[str]) -> str:
        raise NotImplementedError

    def _current(self) -> bool:
        raise NotImplementedError

    def _nginx(self, *arguments: str) -> List[str]:
        # -e stderr: errors from before the config is read go to stderr.
        return [self.nginx, "-p", str(self.dir), "-c", "nginx.conf", "-e", "stderr",
                *arguments]

    def _write(self, addresses: List[str]) -> None:
        self.generation += 1
        (self.dir / "nginx.conf").write_text(self._render(addresses))

    def start(self, addresses: List[str]) -> None:
        self._write(addresses)
        # nginx started as root runs its workers as "nobody"; they write temporary files here.
        self.dir.chmod(0o755)
        with open(self.dir / "nginx.stderr", "wb") as stderr:
            self.process = subprocess.Popen(
                self._nginx("-g", "daemon off;"), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        processes.wait_for(self._current, self.process, "nginx", self.dir / "nginx.stderr")

    def route(self, addresses: List[str]) -> None:
        """Balance `addresses` from now on: rewrite the list and reload nginx, as an ingress
        controller does. Returns once new connections get the new configuration; the old
        worker processes finish what they hold on the old one."""
        self._write(addresses)
        result = subprocess.run(self._nginx("-s", "reload"), capture_output=True, text=True,
                                timeout=RELOAD_SECONDS)
        if result.returncode != 0:
            raise FleetError(f"nginx -s reload failed: {result.stderr.strip()}")
        deadline = time.monotonic() + RELOAD_SECONDS
        while not self._current():
            if time.monotonic() > deadline:
                raise FleetError(f"nginx did not reload in {RELOAD_SECONDS} s; "
                                 f"{self.dir / 'error.log'} may say why")
            time.sleep(0.02)

    def upstream_errors(self) -> Counter:
        """What nginx's error log says went wrong with the replicas, and how often."""
        path = self.dir / "error.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return Counter(re.findall(r"\[error\] \d+#\d+: \*\d+ (.*?), client:", text))

    def stop(self) -> None:
        processes.stop(self.process)


class Balancer(Nginx):
    """nginx with deploy/nginx.conf, an HTTP proxy: it picks a replica for each call."""

    def __init__(self, directory: Path, post_retries: bool = True) -> None:
        """post_retries=False: without deploy/nginx.conf's non_idempotent, so that nginx
        never sends a call again once it has sent it, as for a service whose messages must
        not run twice."""
        super().__init__(directory)
        self.config_text = CONFIG.read_text()
        if not post_retries:
            self.config_text, count = re.subn(r"(proxy_next_upstream [^;]*) non_idempotent;",
                                              r"\1;", self.config_text)
            if count != 1:
                raise ValueError("expected one proxy_next_upstream ... non_idempotent line")

    def _render(self, addresses: List[str]) -> str:
        return render(self.config_text, self.port, addresses, self.generation)

    def _current(self) -> bool:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            connection.request("GET", GENERATION_PATH)
            return connection.getresponse().read() == str(self.generation).encode()
        except OSError:
            return False
        finally:
            connection.close()

    def mark(self) -> int:
        """Where the calls counted from now on start: the size of nginx's access log."""
        path = self.dir / "access.log"
        return path.stat().st_size if path.exists() else 0

    def window(self, start: int, end: int) -> Window:
        """The calls logged between two mark() values."""
        with open(self.dir / "access.log", "rb") as log:
            log.seek(start)
            text = log.read(end - start).decode(errors="replace")
        answered: Counter = Counter()
        retried = errors = 0
        for status, upstreams in CALL_LINE.findall(text):
            tried = upstreams.split(", ")
            retried += len(tried) > 1
            if status == "200":
                answered[tried[-1]] += 1
            else:
                errors += 1
        return Window(answered, retried, errors)

"""Several AvroEcho servers behind nginx, on this machine: start them, load them, stop them.

Try it: `make fleet`, or `python -m deploy.fleet` from the repository's root (nginx must be
installed). It starts server.py three times and nginx in front, with deploy/nginx.conf on
free ports, makes calls through nginx with EchoClient, prints how many calls each server
answered, and stops everything. With `--failover`, it also kills one server (SIGKILL) in
the middle of the load, starts it again, and goes on until that server gets calls again.
The processes' plumbing (free ports, nginx's program, waiting and stopping) is
deploy/processes.py's, the clients' calls (Load) deploy/load.py's; each name that other
modules import from here is still importable from here.

tests/test_fleet.py runs the same Fleet, Load and failover().
"""

import argparse
import http.client
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

from deploy import processes
from deploy.load import Load, LoadResult
from deploy.processes import HOST, FleetError, free_port, nginx_program

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "nginx.conf"
PROGRESS_SECONDS = 5.0  # between two progress lines of a long load
# One line of server.py's access log (--access-log) for an Avro call that was answered.
ANSWERED_CALL = re.compile(r'"POST \S* HTTP/1\.[01]" 200 ')


def render_config(text: str, listen_port: int, server_ports: list) -> str:
    """deploy/nginx.conf with nginx on listen_port and the servers on server_ports."""
    listen = re.findall(rf"^\s*listen {HOST}:(\d+);", text, re.MULTILINE)
    servers = re.findall(rf"^\s*server {HOST}:(\d+)\b", text, re.MULTILINE)
    if len(listen) != 1 or len(servers) != len(server_ports):
        raise ValueError(f"expected one listen and {len(server_ports)} server lines on "
                         f"{HOST}, found {len(listen)} and {len(servers)}")
    ports = dict(zip([*listen, *servers], map(str, [listen_port, *server_ports])))
    return re.sub(rf"{HOST}:(\d+)", lambda match: f"{HOST}:{ports[match.group(1)]}", text)


def server_count(text: str) -> int:
    """How many servers the config's upstream lists."""
    return len(re.findall(rf"^\s*server {HOST}:\d+\b", text, re.MULTILINE))


class Server:
    """One server.py process with its access log in a file; it can be killed and restarted
    on the same port. The log is appended to, so it counts calls across restarts."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self._log_start = 0

    def start(self) -> None:
        """Start on self.port (0: a free port, then remembered)."""
        # A restarted server appends to the same log: look for its startup line after this.
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                # --metrics: Prometheus scrapes each server (deploy/prometheus.yml).
                [sys.executable, str(ROOT / "server.py"), "--port", str(self.port),
                 "--access-log", "--metrics"],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)

    def wait_until_listening(self) -> None:
        def listening() -> bool:
            with open(self.log, "rb") as log:
                log.seek(self._log_start)
                started = log.read().decode(errors="replace")
            match = re.search(rf"listening on http://{re.escape(HOST)}:(\d+)/", started)
            if match:
                self.port = int(match.group(1))
            return match is not None

        processes.wait_for(listening, self.process, "server.py", self.log)

    def kill(self) -> None:
        """SIGKILL: no draining, no goodbye, as when a machine or a process dies."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        processes.stop(self.process)

    def answered(self) -> int:
        """Avro calls answered so far, read from this server's own access log."""
        with open(self.log, errors="replace") as log:
            return sum(1 for line in log if ANSWERED_CALL.search(line))


class Fleet:
    """nginx, with deploy/nginx.conf, in front of as many servers as it lists, all on free
    local ports and run from a temporary directory. A context manager: on exit, every
    process is stopped and the directory removed, whatever happened."""

    def __init__(self, config: Path = CONFIG) -> None:
        self.config_text = config.read_text()
        self.nginx = nginx_program()
        if self.nginx is None:
            raise FleetError("nginx is not installed (Debian: apt-get install nginx)")
        self.port = 0
        self.servers: list = []
        self.nginx_process: Optional[subprocess.Popen] = None
        self.dir: Optional[Path] = None

    def __enter__(self) -> "Fleet":
        self.dir = Path(tempfile.mkdtemp(prefix="avro-fleet-"))
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        processes.stop(self.nginx_process)
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self) -> None:
        count = server_count(self.config_text)
        self.servers = [Server(self.dir / f"server-{n + 1}.log") for n in range(count)]
        for server in self.servers:  # all at once: each takes a moment to import its modules
            server.start()
        for server in self.servers:
            server.wait_until_listening()
        self.port = free_port()
        (self.dir / "nginx.conf").write_text(
            render_config(self.config_text, self.port, [s.port for s in self.servers]))
        # nginx started as root runs its workers as "nobody", and they write request and
        # response bodies too large for memory into temporary directories under this one.
        self.dir.chmod(0o755)
        with open(self.dir / "nginx.stderr", "wb") as stderr:
            # -e stderr: errors from before the config is read go to stderr, whatever log
            # file the nginx build names.
            self.nginx_process = subprocess.Popen(
                [self.nginx, "-p", str(self.dir), "-c", "nginx.conf", "-e", "stderr",
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True)
        processes.wait_for(self._healthy, self.nginx_process, "nginx", self.dir / "nginx.stderr")

    def _healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple:
        """GET path through nginx: (status, body)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def answered(self) -> list:
        """Avro calls answered so far by each server, from their access logs."""
        return [server.answered() for server in self.servers]

    def nginx_log(self) -> str:
        """nginx's access log: one line per request, with the servers it went to."""
        return (self.dir / "access.log").read_text(errors="replace")


class FailoverResult(NamedTuple):
    load: LoadResult
    answered: list  # calls answered by each server during the load
    made_while_down: int  # calls made between the kill and the restart
    answered_after_restart: int  # by the killed server, once restarted
    retried: int  # calls that nginx sent to more than one server (from its access log)


def failover(fleet: Fleet, victim: int = 1, clients: int = 8, calls_per_phase: int = 300,
             restart_timeout: float = 20.0) -> FailoverResult:
    """Kill fleet.servers[victim] (SIGKILL) in the middle of a load, start it again, and go
    on until it has answered calls again (or restart_timeout passes)."""
    before = fleet.answered()
    log_before = len(fleet.nginx_log())
    server = fleet.servers[victim]
    with Load(fleet.port, clients) as load:
        load.wait(calls_per_phase)
        server.kill()
        killed_at = load.made
        load.wait(killed_at + calls_per_phase)
        restarted_at = load.made
        server.start()  # on the same port: nginx's config names it
        server.wait_until_listening()
        answered_at_restart = server.answered()
        deadline = time.monotonic() + restart_timeout
        # nginx tries a failed server again after fail_timeout (5 s in deploy/nginx.conf).
        while server.answered() == answered_at_restart and time.monotonic() < deadline:
            time.sleep(0.05)
        load.wait(load.made + calls_per_phase)  # and a little more, with all three back
    after = fleet.answered()
    # A call sent to more than one server is logged with all of them: "upstream=A, B".
    retried = len(re.findall(r"^.*\"POST .* upstream=\S+, ", fleet.nginx_log()[log_before:],
                             re.MULTILINE))
    return FailoverResult(
        load=load.result(),
        answered=[a - b for a, b in zip(after, before)],
        made_while_down=restarted_at - killed_at,
        answered_after_restart=server.answered() - answered_at_restart,
        retried=retried)


def _load(fleet: Fleet, calls: int, clients: int) -> tuple:
    """Make `calls` calls through nginx: (LoadResult, calls answered by each server)."""
    before = fleet.answered()
    next_progress = time.monotonic() + PROGRESS_SECONDS
    with Load(fleet.port, clients, calls) as load:
        while load.made < calls:
            time.sleep(0.05)
            if time.monotonic() > next_progress:
                print(f"  {load.made} calls made ...", flush=True)
                next_progress += PROGRESS_SECONDS
    return load.result(), [after - before for after, before in zip(fleet.answered(), before)]


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.fleet",
        description="Run server.py several times behind nginx, and call it through nginx.")
    parser.add_argument("--calls", type=int, default=3000,
                        help="calls to make (default: %(default)s); with --failover, the "
                             "load also goes on until the restarted server answers again")
    parser.add_argument("--clients", type=int, default=8,
                        help="clients calling at once, each on its own connection "
                             "(default: %(default)s)")
    parser.add_argument("--failover", action="store_true",
                        help="kill one server (SIGKILL) during the load, then start it again")
    args = parser.parse_args(argv)
    if args.calls < 3 or args.clients < 1:
        parser.error("--calls must be at least 3, and --clients at least 1")

    # On SIGTERM too, leave through the with-block below, which stops every process.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with Fleet() as fleet:
            ports = ", ".join(str(server.port) for server in fleet.servers)
            print(f"nginx listening on http://{HOST}:{fleet.port}/, in front of "
                  f"{len(fleet.servers)} servers on ports {ports}")
            victim = fleet.servers[1]
            if args.failover:
                print(f"killing the server on port {victim.port} during the load, "
                      "then starting it again", flush=True)
            started = time.monotonic()
            if args.failover:
                result = failover(fleet, 1, args.clients, calls_per_phase=args.calls // 3)
                load, answered = result.load, result.answered
            else:
                load, answered = _load(fleet, args.calls, args.clients)
            print(f"{load.made} calls through nginx from {args.clients} clients in "
                  f"{time.monotonic() - started:.1f} s: {load.failed} failed")
            print("calls answered by each server: " + ", ".join(
                f"port {server.port} {count}" for server, count in zip(fleet.servers, answered)))
            if args.failover:
                print(f"{result.made_while_down} calls made while the server on port "
                      f"{victim.port} was down; {result.retried} calls retried by nginx on "
                      f"another server; {result.answered_after_restart} answered by it after "
                      "its restart")
            for error in load.errors:
                print(f"  failed: {error}")
    except FleetError as e:
        print(f"fleet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet: interrupted; stopped nginx and the servers", file=sys.stderr)
        return 130
    print("stopped nginx and the servers")
    return 0 if load.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

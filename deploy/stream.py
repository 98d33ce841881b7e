"""nginx as a TCP balancer (its stream module) in front of the replicas of a rolling update,
as kube-proxy is in front of a Kubernetes Service's pods.

nginx's HTTP proxy (deploy/nginx.conf, the Balancer of deploy/replicas.py) picks a replica
for each call. A TCP balancer picks one for each connection, when it opens, and every call
on that connection goes to that replica until the connection closes. kube-proxy does the
same: its rules pick a pod for each new connection, and the kernel's connection tracking
keeps an established one on its pod when the endpoints change. Here nginx's `stream {}`
sends each new connection to the next replica of its list in turn (round robin, shared by
its worker processes), and route() rewrites the list and reloads nginx, as the HTTP Balancer
does. On a reload, new worker processes take the new connections, and the old ones go on
serving the connections they hold, each on its old replica, until the client or the replica
closes it: no worker_shutdown_timeout is set, which would cut them off.

A TCP balancer sees bytes, not calls: the calls that each replica answered are counted from
the replica's own access log (server.py --access-log). Nor can it send a call again: the
client does, when it finds its kept-alive connection closed (EchoClient's retry), and
ClientRetries counts those.

The stream module is a package of its own on Debian, libnginx-mod-stream, which the
Makefile installs with nginx; the configuration loads it (load_module). stream_module()
finds it.
"""

import re
import socket
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import avrohttp.client
from deploy.fleet import ANSWERED_CALL
from deploy.processes import HOST, FleetError, free_port, nginx_program
from deploy.replicas import Nginx, Replica, Window

MISSING = ("nginx's stream module is not installed (Debian: apt-get install "
           "libnginx-mod-stream)")

CONFIG = """\
# nginx as a TCP balancer, written by deploy/stream.py.
{load_module}worker_processes auto;
pid nginx.pid;
error_log error.log warn;

events {{
    worker_connections 1024;
}}

stream {{
    upstream replicas {{
        # The round robin's place and the failure counts, shared by all worker processes.
        zone replicas 64k;
{servers}    }}

    server {{
        listen {host}:{port};
        proxy_pass replicas;
        # A connection that is refused goes to the next replica (nothing was sent on it).
        proxy_connect_timeout 1s;
    }}

    # Which configuration answers: its generation, then the connection is closed.
    server {{
        listen {host}:{status_port};
        return "{generation}";
    }}
}}
"""


def stream_module() -> Optional[str]:
    """What the configuration needs for the stream module: a load_module line, or "" if
    nginx has it built in; None if it has neither (or there is no nginx)."""
    nginx = nginx_program()
    if nginx is None:
        return None
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    if re.search(r"--with-stream(\s|$)", built):
        return ""
    found = re.search(r"--modules-path=(\S+)", built)
    path = Path(found.group(1) if found else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    return f"load_module {path};\n" if path.exists() else None


def render(port: int, status_port: int, addresses: List[str], generation: int,
           load_module: str) -> str:
    """The configuration: nginx on `port`, balancing the connections over `addresses`
    ("host:port"), and saying `generation` on `status_port`."""
    if not addresses:
        raise ValueError("need addresses to balance")
    servers = "".join(f"        server {address} max_fails=1 fail_timeout=5s;\n"
                      for address in addresses)
    return CONFIG.format(load_module=load_module, servers=servers, host=HOST, port=port,
                         status_port=status_port, generation=generation)


class ClientRetries:
    """Counts the calls that the clients of this process send a second time, on a new
    connection, because the server closed their kept-alive one (avrohttp.client's resend
    rule says yes; a call that fails on a new connection is never sent again). install()
    wraps the rule, uninstall() puts it back."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._rule = avrohttp.client.resend

    def _counted(self, error: BaseException, retry: bool) -> bool:
        again = self._rule(error, retry)
        if again:
            with self._lock:
                self.count += 1
        return again

    def install(self) -> None:
        avrohttp.client.resend = self._counted

    def uninstall(self) -> None:
        avrohttp.client.resend = self._rule


class TcpBalancer(Nginx):
    """nginx's stream module, in front of a list of replicas that route() changes. It counts
    the calls from the access logs of `replicas`, every replica started so far (a list that
    the caller adds to), which must run with --access-log; and, from start() to stop(), the
    calls that the clients of this process send again (ClientRetries)."""

    def __init__(self, directory: Path, replicas: List[Replica]) -> None:
        super().__init__(directory)
        load_module = stream_module()
        if load_module is None:
            raise FleetError(MISSING)
        self.load_module = load_module
        self.replicas = replicas
        self.status_port = free_port()
        self.retries = ClientRetries()

    def _render(self, addresses: List[str]) -> str:
        return render(self.port, self.status_port, addresses, self.generation,
                      self.load_module)

    def _current(self) -> bool:
        try:
            with socket.create_connection((HOST, self.status_port), timeout=2) as sock:
                said = b""
                while chunk := sock.recv(64):
                    said += chunk
        except OSError:
            return False
        return said == str(self.generation).encode()

    def start(self, addresses: List[str]) -> None:
        self.retries.install()
        super().start(addresses)

    def stop(self) -> None:
        super().stop()
        self.retries.uninstall()

    def mark(self) -> Tuple[Dict[str, int], int]:
        """Where the counts from now on start: the size of each replica's log, and the
        calls sent again so far."""
        return ({replica.address: replica.log.stat().st_size if replica.log.exists() else 0
                 for replica in self.replicas}, self.retries.count)

    def window(self, start: Tuple[Dict[str, int], int],
               end: Tuple[Dict[str, int], int]) -> Window:
        """The calls that each replica logged between two mark() values, and those that the
        clients sent again; nginx answers no call with an error of its own (errors=None)."""
        answered: Counter = Counter()
        by_address = {replica.address: replica for replica in self.replicas}
        (start_sizes, start_retries), (end_sizes, end_retries) = start, end
        for address, end_size in end_sizes.items():
            with open(by_address[address].log, "rb") as log:
                log.seek(start_sizes.get(address, 0))
                text = log.read(end_size - start_sizes.get(address, 0)).decode(
                    errors="replace")
            count = sum(1 for line in text.splitlines() if ANSWERED_CALL.search(line))
            if count:
                answered[address] = count
        return Window(answered, end_retries - start_retries, None)

"""Network namespaces for replicas: each one gets an address of its own, as a pod does.

A Kubernetes pod has its own network namespace and IP address, and a new pod gets a new
address; every pod listens on the same port. `Subnet.create()` makes the same on this
machine: a namespace, joined to this one by a veth pair, with a /30 of the range set aside
for benchmarks (198.18.0.0/15, RFC 2544, never routed on the Internet). The replica runs
inside it (`subnet.command(...)`) and listens on its own address; nginx, in this namespace,
reaches it through the veth pair.

It takes root (CAP_NET_ADMIN) and the `ip` program. `unavailable()` says why it cannot be
used here, if it cannot: an unprivileged container, say. deploy/rollout.py then runs the
replicas on loopback ports instead.
"""

import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

PREFIX = "avro-rollout"  # every namespace made here is named "avro-rollout-<pid>-<n>"
RANGE = ipaddress.ip_network("198.18.0.0/15")
# Held while an address range is picked and assigned, so that two runs at once (a test and
# `make rollout`, say) never pick the same one.
LOCK = Path(tempfile.gettempdir()) / "avro-rollout-netns.lock"


class NetnsError(Exception):
    """An `ip` command failed."""


def _ip(*arguments: str) -> str:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")
    return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Delete the namespaces left by runs that died without cleaning up (SIGKILL, say)."""
    for line in _ip("netns", "list").splitlines():
        match = re.match(rf"({re.escape(PREFIX)}-(\d+)-\d+)\b", line)
        if match and not _alive(int(match.group(2))):
            subprocess.run(["ip", "netns", "delete", match.group(1)], capture_output=True)


class Subnet:
    """One namespace with a veth pair: this side at .1 of a /30, the replica's side at .2."""

    _made = 0  # namespaces made by this process so far, for their names

    def __init__(self) -> None:
        Subnet._made += 1
        number = Subnet._made
        self.name = f"{PREFIX}-{os.getpid()}-{number}"
        self.outside = f"avr{os.getpid()}x{number}"[:15]  # interface names: 15 characters
        self.network: Optional[ipaddress.IPv4Network] = None

    @property
    def address(self) -> str:
        """The replica's address, inside the namespace."""
        return str(self.network[2])

    def create(self) -> "Subnet":
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outside, "type", "veth", "peer", "name", "eth0",
                "netns", self.name)
            with open(LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.network = self._free_network()
                _ip("addr", "add", f"{self.network[1]}/30", "dev", self.outside)
            _ip("link", "set", self.outside, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", "eth0")
            _ip("-n", self.name, "link", "set", "eth0", "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    @staticmethod
    def _free_network() -> ipaddress.IPv4Network:
        used = [ipaddress.ip_interface(address).network
                for address in re.findall(r"\binet (\S+)", _ip("-4", "-o", "addr", "show"))]
        for network in RANGE.subnets(new_prefix=30):
            if not any(network.overlaps(other) for other in used):
                return network
        raise NetnsError(f"no free /30 left in {RANGE}")

    def command(self, argv: List[str]) -> List[str]:
        """argv, run inside the namespace. `ip netns exec` execs it: same process id."""
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        """Delete the namespace; the veth pair goes with it. Its processes must be gone."""
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.outside], capture_output=True)


def unavailable() -> Optional[str]:
    """None if namespaces work here; else why not, in a few words."""
    if shutil.which("ip") is None:
        return "the ip program is not installed (Debian: apt-get install iproute2)"
    if os.geteuid() != 0:
        return "they take root"
    try:
        remove_stale()
        Subnet().create().delete()
    except (NetnsError, OSError, subprocess.SubprocessError) as e:
        return f"this machine does not allow them ({e})"
    return None

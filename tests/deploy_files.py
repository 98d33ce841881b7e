"""deploy/kubernetes/ and deploy/Dockerfile, read for test_kubernetes.py and
test_dockerfile.py: the manifests' resources and the server's container, the server's own
argparse on a command line, the Dockerfile's stages, and the options of `server.py --help`.
"""

import argparse
import json
import re
import subprocess
import sys

import pytest
import yaml

from avrohttp import cli
from conftest import ROOT

KUBERNETES_VERSION = "1.31.0"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS = ROOT / "requirements.txt"
# Packages that have no place in the final image: compilers and the like.
BUILD_TOOLS = ("gcc", "g++", "cc", "clang", "make", "build-essential", "python3-dev",
               "libc6-dev", "cargo", "rustc")


def resources() -> list:
    """Every resource of every manifest, as (file name, resource)."""
    found = []
    for path in MANIFESTS:
        for resource in yaml.safe_load_all(path.read_text()):
            if resource is not None:
                found.append((path.name, resource))
    return found


RESOURCES = resources()


def the(kind: str) -> dict:
    """The one resource of this kind."""
    found = [resource for _, resource in RESOURCES if resource["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s in deploy/kubernetes/, not 1"
    return found[0]


def container() -> dict:
    containers = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the pod should run the server alone"
    return containers[0]


def security(field: str):
    """A securityContext field as it applies to the container: its own, else the pod's."""
    pod = the("Deployment")["spec"]["template"]["spec"].get("securityContext", {})
    return container().get("securityContext", {}).get(field, pod.get(field))


def container_port(port) -> int:
    """A port of the container, by number or by name, as its number."""
    ports = container()["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"the container has no port {port}"
        return port
    named = [p["containerPort"] for p in ports if p.get("name") == port]
    assert named, f"the container has no port named {port!r}"
    return named[0]


def known_options(argv: list) -> tuple:
    """The server's own argparse (avrohttp.cli) on a command line: (the options it knows,
    the arguments it does not)."""
    parser = argparse.ArgumentParser()
    cli.add_server_arguments(parser)
    return parser.parse_known_args(argv)


def manifest_args() -> list:
    args = list(container()["args"])
    assert all(isinstance(arg, str) for arg in args), "args must be strings: quote numbers"
    return args


# The Dockerfile, read as a list of stages of (instruction, arguments).

def dockerfile() -> tuple:
    """(the ARGs before the first FROM, [stage, ...]), each stage a list of
    (INSTRUCTION, arguments), with line continuations joined and comments left out."""
    lines, joined = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not joined and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        lines.append(joined + line)
        joined = ""
    global_args, stages = {}, []
    for line in lines:
        instruction, _, arguments = line.strip().partition(" ")
        instruction = instruction.upper()
        arguments = " ".join(arguments.split())
        if instruction == "FROM":
            stages.append([])
        if not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            name, _, default = arguments.partition("=")
            global_args[name] = default
            continue
        stages[-1].append((instruction, arguments))
    return global_args, stages


def stage_image(arguments: str, global_args: dict) -> tuple:
    """A FROM's (image, stage name or None), its ${ARG}s replaced."""
    words = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], arguments).split()
    words = [word for word in words if not word.startswith("--platform")]
    return words[0], (words[2] if len(words) == 3 and words[1].upper() == "AS" else None)


def instructions(stage: list, name: str) -> list:
    return [arguments for instruction, arguments in stage if instruction == name]


def exec_form(name: str) -> list:
    """The final stage's ENTRYPOINT or CMD, which must be in exec form (a JSON array)."""
    found = instructions(dockerfile()[1][-1], name)
    assert len(found) == 1, f"the final stage should have one {name}, not {len(found)}"
    try:
        words = json.loads(found[0])
    except json.JSONDecodeError:
        pytest.fail(f"{name} {found[0]} is in shell form: a shell would be PID 1, and would "
                    "not pass SIGTERM on to the server")
    assert isinstance(words, list) and all(isinstance(word, str) for word in words)
    return words


def copied_from_context(stage: list) -> list:
    """The sources of a stage's COPY (and ADD) instructions that come from the build context,
    with where each goes: [(source, destination), ...]."""
    copied = []
    for arguments in instructions(stage, "COPY") + instructions(stage, "ADD"):
        words = arguments.split()
        if any(word.startswith("--from") for word in words):
            continue
        words = [word for word in words if not word.startswith("--")]
        copied += [(source, words[-1]) for source in words[:-1]]
    return copied


@pytest.fixture(scope="module")
def help_options() -> set:
    """The options that `server.py --help` lists."""
    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout))

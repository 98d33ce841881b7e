"""deploy/kubernetes/ and deploy/Dockerfile: valid, and in step with server.py and each other.

Every manifest is validated against Kubernetes 1.31's own schemas in strict mode (unknown
fields are errors), with kubernetes-validate, which ships the schemas: no cluster and no
network. The rest fail when one file drifts from another: the ports, the probes' paths (asked
of server.py itself, run from the files the image copies, with the manifest's options), the
grace period against the shutdown delay and the drain, the image's user against the pod's, and
the server options that the image and the manifest pass, parsed by the server's own argparse
and looked up in `server.py --help`. No container engine runs here: the Dockerfile is read, not
built.
"""

import argparse
import copy
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from avrohttp import cli, supervisor
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


# The manifests against Kubernetes' schemas.

@pytest.mark.parametrize("name, resource", RESOURCES,
                         ids=[f"{name}:{resource['kind']}" for name, resource in RESOURCES])
def test_manifest_is_valid_for_kubernetes(name, resource):
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_validation_finds_mistakes():
    """The validation above would catch a misspelt field, and a value of the wrong type."""
    misspelt = copy.deepcopy(the("Deployment"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = copy.deepcopy(the("Service"))
    wrong_type["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_the_resources_are_the_three_expected():
    assert sorted(resource["kind"] for _, resource in RESOURCES) == [
        "Deployment", "PodDisruptionBudget", "Service"]
    deployment, service, budget = the("Deployment"), the("Service"), the("PodDisruptionBudget")
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items(), \
        "the Service selects no pod of the Deployment"
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items(), \
        "the PodDisruptionBudget covers no pod of the Deployment"
    assert (budget["spec"].get("maxUnavailable") == 1
            or budget["spec"].get("minAvailable") == deployment["spec"]["replicas"] - 1)


# The manifest against the server.

def test_the_manifest_passes_options_the_server_has(help_options):
    """Every option of the container's args is one that `server.py --help` lists, and the
    server's own argparse takes the whole command line."""
    args = manifest_args()
    given = {arg.partition("=")[0] for arg in args if arg.startswith("--")}
    assert given <= help_options, f"server.py --help lists no {sorted(given - help_options)}"
    cli.parse_options(args)  # exits (SystemExit) on an option or a value it refuses


def test_ports_agree():
    """The server's --port, the container's port and the Service's targetPort are one."""
    options, _ = known_options(manifest_args())
    port = options.port
    assert container_port(port) == port
    assert container_port("http") == port, "the container's port named http is not --port"
    service_ports = the("Service")["spec"]["ports"]
    assert [container_port(p.get("targetPort", p["port"])) for p in service_ports] == [port]
    assert [p["port"] for p in service_ports] == [8130]
    assert options.host == "0.0.0.0", "the server must listen on the pod's address, not lo"


def test_the_probes_ask_the_container_port():
    for probe in ("readinessProbe", "livenessProbe"):
        get = container()[probe]["httpGet"]
        assert container_port(get["port"]) == known_options(manifest_args())[0].port, probe
        assert get.get("scheme", "HTTP") == "HTTP", f"{probe}: the server speaks plain HTTP"


def test_the_probes_are_sensible():
    """Readiness reacts in seconds; liveness gives a busy server time before a restart, and
    stays 200 through the shutdown delay."""
    ready, live = container()["readinessProbe"], container()["livenessProbe"]
    assert ready["httpGet"]["path"] == "/health/ready"
    assert live["httpGet"]["path"] == "/health/live"
    assert ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3) <= 15
    assert live.get("periodSeconds", 10) * live.get("failureThreshold", 3) >= 20
    for probe in (ready, live):
        assert probe.get("timeoutSeconds", 1) < probe.get("periodSeconds", 10)


def drain_bound(options) -> float:
    """The longest that a stop takes after the shutdown delay, as the server bounds it: each
    host stops waiting for the calls in flight after --drain-timeout (avrohttp.serve's _watch,
    avrohttp.serve_asyncio's _drain); with --workers, the supervisor kills a worker that
    outlives it supervisor.KILL_GRACE later."""
    bound = options.drain_timeout
    if options.workers > 1:
        bound += supervisor.KILL_GRACE
    return bound


def test_the_grace_period_outlasts_the_delay_and_the_drain():
    options, _ = cli.parse_options(manifest_args())[:2]
    spec = the("Deployment")["spec"]["template"]["spec"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    delay = options.shutdown_delay
    assert delay > 0, "without a shutdown delay, calls are sent to a pod that has stopped"
    assert grace > delay + drain_bound(options), (
        f"terminationGracePeriodSeconds {grace} s: SIGKILL comes before the {delay} s delay "
        f"and the {drain_bound(options)} s drain are over")


def test_the_pod_is_locked_down():
    spec = the("Deployment")["spec"]["template"]["spec"]
    assert security("runAsNonRoot") is True
    assert isinstance(security("runAsUser"), int) and security("runAsUser") > 0
    assert security("readOnlyRootFilesystem") is True
    assert security("allowPrivilegeEscalation") is False
    assert container()["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container()["securityContext"]["capabilities"]
    assert security("seccompProfile") == {"type": "RuntimeDefault"}
    assert spec.get("automountServiceAccountToken") is False
    for kind in ("requests", "limits"):
        assert set(container()["resources"][kind]) == {"cpu", "memory"}, kind


def test_a_server_that_writes_gets_a_volume():
    """With a read-only root, the server may write only to a volume. It writes a directory
    of its own in the temporary directory only for the shared metrics of --workers N with
    --metrics (avrohttp.supervisor); then /tmp must be an emptyDir."""
    options = known_options(manifest_args())[0]
    if options.workers > 1 and options.metrics:
        spec = the("Deployment")["spec"]["template"]["spec"]
        empty = {volume["name"] for volume in spec.get("volumes", []) if "emptyDir" in volume}
        mounts = {mount["mountPath"]: mount["name"]
                  for mount in container().get("volumeMounts", [])}
        assert mounts.get("/tmp") in empty, "--workers with --metrics writes to /tmp"


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_probes_get_200_from_the_server(tmp_path):
    """server.py, run from a copy of the files that the image copies and nothing else, with
    the manifest's options (on 127.0.0.1 and a free port instead), answers both probes' paths
    with 200; after SIGTERM, during the shutdown delay, ready is 503 and live still 200."""
    app = tmp_path / "app"
    app.mkdir()
    for source, _ in copied_from_context(dockerfile()[1][-1]):
        source = ROOT / source
        if source.is_dir():
            shutil.copytree(source, app / source.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, app)
    # The manifest's delay, shortened to keep the test fast; its other options as they are.
    args = manifest_args()
    if "--shutdown-delay" in args:
        args[args.index("--shutdown-delay") + 1] = "2"
    process = subprocess.Popen(
        [sys.executable, "-E", "-s", "server.py", *args, "--host", "127.0.0.1", "--port", "0"],
        cwd=app, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        for line in iter(process.stderr.readline, ""):
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if match:
                break
        assert match, f"server.py did not start: {line}{process.stderr.read()}"
        port = int(match.group(1))
        for probe in ("readinessProbe", "livenessProbe"):
            path = container()[probe]["httpGet"]["path"]
            assert get(port, path) == 200, f"{probe}: GET {path}"
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert get(port, container()["readinessProbe"]["httpGet"]["path"]) == 503
        assert get(port, container()["livenessProbe"]["httpGet"]["path"]) == 200
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


# The Dockerfile against the manifest, the server and requirements.txt.

def test_the_image_is_built_in_two_stages_from_a_pinned_python():
    global_args, stages = dockerfile()
    assert len(stages) >= 2, "a builder stage and a final stage"
    images = [stage_image(stage[0][1], global_args)[0] for stage in stages]
    for image in images:
        name, _, tag = image.partition(":")
        assert name == "python" and re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), (
            f"{image}: not python:3.11.N-slim, pinned to a patch release")
    assert len(set(images)) == 1, "the virtualenv is made for the builder's Python"
    builder = stage_image(stages[0][0][1], global_args)[1]
    final = stages[-1]
    from_builder = [arguments for arguments in instructions(final, "COPY")
                    if f"--from={builder}" in arguments.split()]
    assert from_builder == [f"--from={builder} /opt/venv /opt/venv"], (
        "the final stage takes the builder's virtualenv, and nothing else of it")


def test_the_final_image_has_no_build_tools_or_caches():
    final = dockerfile()[1][-1]
    for command in instructions(final, "RUN"):
        words = re.split(r"[\s;&|]+", command)
        assert not set(words) & set(BUILD_TOOLS), f"RUN {command}"
        assert "pip" not in " ".join(words) or "--no-cache-dir" in words, f"RUN {command}"
        assert "apt-get" not in words or "install" not in words, f"RUN {command}"
    for stage in dockerfile()[1]:
        for command in instructions(stage, "RUN"):
            if re.search(r"\bpip install\b", command):
                assert "--no-cache-dir" in command.split(), f"RUN {command}: a pip cache"


def test_the_image_installs_the_pinned_requirements():
    """The builder copies requirements.txt and installs from it alone (--no-deps), and
    requirements.txt pins every package, and everything those pull in."""
    builder = dockerfile()[1][0]
    copied = dict(copied_from_context(builder))
    assert "requirements.txt" in copied
    installs = [command for command in instructions(builder, "RUN") if "pip install" in command]
    assert len(installs) == 1
    words = installs[0].split()
    assert words[words.index("-r") + 1] == copied["requirements.txt"]
    assert "--no-deps" in words and "pip check" in installs[0]
    pinned = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            specifiers = list(requirement.specifier)
            assert len(specifiers) == 1 and specifiers[0].operator == "==", \
                f"requirements.txt: {line} is not pinned"
            pinned[canonical(requirement.name)] = specifiers[0].version
    environment = {"sys_platform": "linux", "platform_system": "Linux",
                   "python_version": "3.11", "python_full_version": "3.11.13",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   "extra": ""}
    for name in pinned:
        for line in importlib.metadata.requires(name) or []:
            needed = Requirement(line)
            if needed.marker is None or needed.marker.evaluate(environment):
                assert canonical(needed.name) in pinned, \
                    f"{name} needs {needed.name}, which requirements.txt does not pin"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_runs_the_server_as_the_pods_user():
    final = dockerfile()[1][-1]
    users = instructions(final, "USER")
    assert users, "the final image runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "USER by number, so that runAsNonRoot can check it"
    assert int(uid) == security("runAsUser") and int(uid) != 0
    if gid:
        assert int(gid) == security("runAsGroup")
    assert any(f"--uid {uid}" in command for command in instructions(final, "RUN")), \
        "the image has no user with that UID"


def test_the_image_exposes_the_servers_port():
    final = dockerfile()[1][-1]
    assert instructions(final, "EXPOSE") == [str(known_options(manifest_args())[0].port)]
    cmd_options = known_options(exec_form("CMD"))[0]
    assert cmd_options.port == known_options(manifest_args())[0].port
    assert cmd_options.host == "0.0.0.0"


def test_the_image_runs_server_py_with_options_it_accepts(help_options):
    final = dockerfile()[1][-1]
    entrypoint, cmd = exec_form("ENTRYPOINT"), exec_form("CMD")
    assert entrypoint[0] in ("python", "python3") and Path(entrypoint[1]).name == "server.py"
    workdir = instructions(final, "WORKDIR")[-1]
    copied = {str(Path(workdir, destination, Path(source).name))
              for source, destination in copied_from_context(final)}
    assert str(Path(workdir, entrypoint[1])) in copied, "ENTRYPOINT runs a server.py not copied"
    given = {arg for arg in entrypoint[2:] + cmd if arg.startswith("--")}
    assert given <= help_options
    cli.parse_options(entrypoint[2:] + cmd)
    env = " ".join(instructions(final, "ENV"))
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env), "Python's output would be buffered"


def test_the_image_copies_the_servers_files_only():
    """What the final stage copies from the build context is exactly what server.py needs
    (test_the_probes_get_200_from_the_server runs it from a copy of these alone), and
    .dockerignore lets all of it, and what the builder copies, into the build context."""
    stages = dockerfile()[1]
    final = {Path(source).as_posix().rstrip("/") for source, _ in copied_from_context(stages[-1])}
    assert final == {"protocol.py", "server.py", "avrohttp"}
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore should let in only what it names"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in stages:
        for source, _ in copied_from_context(stage):
            assert source.rstrip("/") in allowed, f"{source} is left out of the build context"

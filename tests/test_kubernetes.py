"""deploy/kubernetes/: valid, and in step with server.py and the image.

Every manifest is validated against Kubernetes 1.31's own schemas in strict mode (unknown
fields are errors), with kubernetes-validate, which ships the schemas: no cluster and no
network. The rest fail when the manifest drifts from the server or the image: the ports, the
probes' paths (asked of server.py itself, run from the files the image copies, with the
manifest's options), the grace period against the shutdown delay and the drain, and the server
options that the manifest passes, parsed by the server's own argparse and looked up in
`server.py --help`. deploy/Dockerfile is test_dockerfile.py's; deploy_files.py reads both.
"""

import copy
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import kubernetes_validate
import pytest

from avrohttp import cli, supervisor
from conftest import ROOT
from deploy_files import (KUBERNETES_VERSION, RESOURCES, container, container_port,
                          copied_from_context, dockerfile, known_options, manifest_args,
                          security, the)
# deploy_files.py's fixture: pytest finds a module's fixtures by their names in it.
from deploy_files import help_options as help_options


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

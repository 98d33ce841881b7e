"""deploy/Dockerfile: in step with the manifest (deploy/kubernetes/), server.py and
requirements.txt: two stages from a pinned Python, no build tools or caches in the final image,
the pinned requirements alone, the image's user against the pod's, its port, and the server
options that it passes, parsed by the server's own argparse and looked up in
`server.py --help`. No container engine runs here: the Dockerfile is read (deploy_files.py),
not built.
"""

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

from avrohttp import cli
from deploy_files import (BUILD_TOOLS, DOCKERIGNORE, REQUIREMENTS, copied_from_context,
                          dockerfile, exec_form, instructions, known_options, manifest_args,
                          security, stage_image)
# deploy_files.py's fixture: pytest finds a module's fixtures by their names in it.
from deploy_files import help_options as help_options


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

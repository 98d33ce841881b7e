"""The package installs on its own (pyproject.toml): avrohttp, and none of the tutorial."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT


def test_pip_installs_the_package_alone(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT / "avrohttp", source / "avrohttp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
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

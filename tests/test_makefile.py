"""The Makefile's two commands: `make run` installs only the server extra, `make test` the
dev tools (checked with `make -n` on a fresh venv path: what make would run, not run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parents[1]


def planned(target: str, venv: Path) -> str:
    make = shutil.which("make")
    if make is None:
        service_unavailable("make is not installed")
    done = subprocess.run(
        [make, "-n", "--no-print-directory", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def test_run_installs_the_server_extra_only(tmp_path: Path) -> None:
    plan = planned("run", tmp_path / "venv")
    assert "-m venv" in plan
    assert "pip install --quiet -e '.[server]'" in plan
    assert ".[dev]" not in plan
    assert plan.rstrip().endswith(f"{tmp_path}/venv/bin/keystile serve")


@pytest.mark.parametrize("target", ["test", "lint", "typecheck", "pytest", "install"])
def test_dev_targets_install_the_dev_tools(tmp_path: Path, target: str) -> None:
    plan = planned(target, tmp_path / "venv")
    assert "pip install --quiet -e '.[dev]'" in plan
    assert ".[server]" not in plan

"""README's Install section, run as printed: from a copy of the checkout, and from a wheel
built with ``python -m build`` and installed in a fresh virtual environment (the slow test).

Packages come from the same index the project's own venv was installed from (pip's config).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.doc_blocks import ROOT, doc_block
from tests.e2e.doc_shell import shell_env

pytestmark = [pytest.mark.process, pytest.mark.slow]

TIMEOUT = 600


def checkout_copy(dest: Path) -> Path:
    """What a fresh clone holds for building: the package, pyproject.toml and README.md."""
    dest.mkdir()
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def bash(text: str, cwd: Path) -> str:
    env = shell_env()
    # A user's shell: no project venv on PATH (shell_env puts this venv's bin first).
    env["PATH"] = env["PATH"].split(":", 1)[1]
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_install_from_the_checkout(tmp_path: Path) -> None:
    """``pip install '.[server,postgres,redis]'`` in a new venv gives a working `keystile`
    with the PostgreSQL driver and redis-py."""
    clone = checkout_copy(tmp_path / "keystile")
    out = bash(doc_block("install-checkout").text, clone)
    assert "Usage: keystile" in out
    bash(".venv/bin/python -c 'import asyncpg, redis, keystile.server'", clone)


def test_install_from_a_wheel(tmp_path: Path) -> None:
    """``python -m build`` makes a wheel; installed with the server extra into a fresh venv
    it runs `keystile --help` and `keystile db upgrade` on a new database."""
    clone = checkout_copy(tmp_path / "keystile")
    target = tmp_path / "target-venv"
    text = doc_block("install-wheel").text.replace("/tmp/keystile-venv", str(target))
    # The block starts in the user's activated virtual environment.
    build_venv = tmp_path / "build-venv"
    out = bash(f"python3 -m venv {build_venv} && . {build_venv}/bin/activate\n{text}", clone)
    assert "Usage: keystile" in out
    wheels = list((clone / "dist").glob("keystile-*-py3-none-any.whl"))
    assert len(wheels) == 1
    db = tmp_path / "fresh.db"
    out = bash(f"{target}/bin/keystile db upgrade --db {db} --json", tmp_path)
    assert db.is_file(), out
    # The installed package is the wheel's, not the checkout's.
    where = bash(f"{target}/bin/python -c 'import keystile; print(keystile.__file__)'", tmp_path)
    assert where.startswith(str(target))

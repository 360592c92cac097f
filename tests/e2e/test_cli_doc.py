"""docs/cli.md: its shell example runs as written, in a fresh folder, with the real command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI_TIMEOUT, KEYSTILE, clean_env
from tests.e2e.doc_blocks import doc_block

pytestmark = pytest.mark.process


def test_cli_md_example_runs(tmp_path: Path) -> None:
    """Every ```sh block of docs/cli.md exits 0 under `bash -e`; the example ends on an
    empty list printed as []."""
    blocks = [doc_block("cli-example").text]
    env = clean_env(PATH=f"{KEYSTILE.parent}:{clean_env()['PATH']}")
    outputs = []
    for block in blocks:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=CLI_TIMEOUT * 3,
            check=False,
        )
        assert done.returncode == 0, (block, done.stdout, done.stderr)
        outputs.append(done.stdout)
    assert outputs[-1].endswith("client reports deleted; 0 live token(s) revoked\n[]\n")
    assert '"client_id": "reports"' in outputs[-1]
    assert '"username": "alice"' in outputs[-1]

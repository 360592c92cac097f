"""docs/admin.md's blocks, as printed, against a real `keystile serve --admin-api`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerStarter
from tests.e2e.doc_blocks import doc_block
from tests.e2e.doc_shell import run_block, shell_env

pytestmark = pytest.mark.process


def test_admin_doc_blocks(start_server: ServerStarter, tmp_path: Path) -> None:
    """The admin client is made with the CLI, its token taken with curl, and the API
    creates and lists a client; the secret printed once is the one that works."""
    server = start_server("--admin-api", "--no-demo")
    made = run_block(doc_block("admin-client").text, tmp_path, env=shell_env())
    assert made.returncode == 0, made.output
    secret = re.search(r'"client_secret": "(ks_cs_[^"]+)"', made.output)
    assert secret is not None, made.output
    text = doc_block("admin-calls").text.replace("http://127.0.0.1:8000", server.url)
    ran = run_block(text, tmp_path, env=shell_env(OPS_SECRET=secret[1]))
    assert ran.returncode == 0, ran.output
    lines = [line for line in ran.output.splitlines() if line.startswith("{")]
    created, listed = json.loads(lines[0]), json.loads(lines[1])
    assert created["client_id"] == "reports"
    assert created["client_secret"].startswith("ks_cs_")
    assert [c["client_id"] for c in listed["items"]] == ["ops", "reports"]
    assert '"client_secret":' not in lines[1]

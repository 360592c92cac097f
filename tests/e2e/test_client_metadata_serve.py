"""`keystile serve` turns client ID metadata documents on with its flag, the environment or
the TOML file (docs/client-metadata-documents.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystile.settings import ServerSettings
from tests.e2e.conftest import ServerStarter

pytestmark = pytest.mark.process

METADATA = "/.well-known/oauth-authorization-server"


def test_serve_flag(start_server: ServerStarter) -> None:
    """--client-metadata-documents: the real server advertises the draft's §6 metadata."""
    server = start_server("--no-demo", "--client-metadata-documents")
    body = server.http.get(METADATA).json()
    assert body["client_id_metadata_document_supported"] is True


def test_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TOML keys and KEYSTILE_* variables load, the environment beating the file."""
    config = tmp_path / "k.toml"
    config.write_text(
        "client_metadata_documents = true\n"
        'client_metadata_documents_blocked_hosts = ["*.bad.example"]\n'
        "client_metadata_documents_max_bytes = 4096\n"
    )
    monkeypatch.setenv("KEYSTILE_CLIENT_METADATA_DOCUMENTS_MAX_BYTES", "2048")
    settings = ServerSettings.load(config)
    assert settings.client_metadata_documents is True
    assert settings.client_metadata_documents_blocked_hosts == ["*.bad.example"]
    assert settings.client_metadata_documents_max_bytes == 2048
    assert settings.client_metadata_documents_allow_private is False

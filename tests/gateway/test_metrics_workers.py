"""Metrics with --workers: the shared multiprocess folder, and the figures each worker
publishes into it (the real processes: tests/e2e/test_gateway_workers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import Counter

from keystile import multiprocess_metrics
from keystile.gateway.metrics import GatewayMetrics, _Published


def value(counter: Counter) -> float:
    return float(counter._value.get())


class TestSharedFolder:
    def test_own_folder_lives_as_long_as_the_workers(self, monkeypatch: pytest.MonkeyPatch):
        """Without PROMETHEUS_MULTIPROC_DIR the parent makes a temporary folder for the
        workers, names it in the environment they inherit, and removes it at the end."""
        monkeypatch.delenv(multiprocess_metrics.ENV, raising=False)
        with multiprocess_metrics.shared_folder() as folder:
            assert os.environ[multiprocess_metrics.ENV] == folder
            assert Path(folder).is_dir()
            (Path(folder) / "counter_1.db").write_bytes(b"")
        assert not Path(folder).exists()
        assert multiprocess_metrics.ENV not in os.environ

    def test_operator_folder_is_used_and_kept(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ):
        """A PROMETHEUS_MULTIPROC_DIR the operator set is the workers' folder, left in place."""
        monkeypatch.setenv(multiprocess_metrics.ENV, str(tmp_path))
        with multiprocess_metrics.shared_folder() as folder:
            assert folder == str(tmp_path)
            (tmp_path / "counter_1.db").write_bytes(b"")
        assert (tmp_path / "counter_1.db").exists()
        assert os.environ[multiprocess_metrics.ENV] == str(tmp_path)


def test_published_counters_grow_by_what_changed():
    """Each publication adds what the plain per-process counts gained since the last one;
    a count that starts over (a new event stream object) is added again from zero."""
    metrics = GatewayMetrics()
    published = _Published(metrics)
    metrics.fast_proxy = 5
    published.publish()
    published.publish()
    assert value(published.fast_proxy) == 5
    metrics.fast_proxy = 7
    metrics.fast_forward_auth = 1
    published.publish()
    assert value(published.fast_proxy) == 7
    assert value(published.fast_forward_auth) == 1
    metrics.fast_proxy = 2  # started over
    published.publish()
    assert value(published.fast_proxy) == 9

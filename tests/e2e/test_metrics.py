"""docs/metrics.md, examples/grafana-dashboard.json and examples/prometheus-alerts.yml agree
with the live /metrics of a real AS and a real gateway."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import DemoServer
from tests.e2e.doc_blocks import EXAMPLES, ROOT
from tests.e2e.gateway_procs import start_gateway, start_upstream

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret = "RS_SECRET"

[[routes]]
path = "/api"
upstream = "UPSTREAM"
"""

_NAME = re.compile(r"\bkeystile_[a-z0-9_]+\b")
_HISTOGRAM_SAMPLES = ("_bucket", "_sum", "_count")


def families(text: str) -> dict[str, str]:
    """``{family: type}`` from the ``# TYPE`` lines of a Prometheus text exposition."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            found[name] = kind
    return found


def sample_names(fams: dict[str, str]) -> set[str]:
    """Every series name a query may use: histograms' _bucket/_sum/_count included."""
    names = set(fams)
    for name, kind in fams.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SAMPLES)
    return names


@pytest.fixture
def live(demo_server: DemoServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The families a real AS and a real gateway expose, after some traffic through both."""
    server, demo = demo_server.server, demo_server.demo
    upstream = start_upstream(tmp_path)
    config = (
        CONFIG.replace("AS_URL", server.url)
        .replace("RS_SECRET", demo.rs.secret)
        .replace("UPSTREAM", upstream.url)
    )
    gateway = start_gateway(tmp_path, config)
    try:
        gateway.wait_events()
        token = server.issue(demo.app, scope="read")
        assert server.introspect(demo.rs, token).json()["active"] is True
        for _ in range(2):
            r = gateway.http.get("/api/x", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200
        assert server.revoke(demo.app, token).status_code == 200
        as_text = server.http.get("/metrics").text
        gw_text = gateway.http.get("/metrics").text
        yield {**families(as_text), **families(gw_text)}
    finally:
        gateway.stop()
        upstream.stop()


def documented() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"`(keystile_[a-z0-9_]+)`", text))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def alert_rules() -> list[dict[str, object]]:
    rules = yaml.safe_load((EXAMPLES / "prometheus-alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_docs_name_every_live_metric(live: dict[str, str]) -> None:
    """docs/metrics.md names every metric family /metrics exposes (prometheus_client's
    ``_created`` companions aside), and names none that does not exist."""
    exposed = {name for name in live if not name.endswith("_created")}
    assert len(exposed) >= 15  # the AS's and the gateway's
    assert exposed - documented() == set()
    assert documented() - sample_names(live) == set()


def test_dashboard_queries_live_metrics(live: dict[str, str]) -> None:
    """Every metric the Grafana dashboard queries exists on the live AS or gateway, and
    every live family is on some panel."""
    exprs = dashboard_exprs()
    assert exprs
    used = {name for expr in exprs for name in _NAME.findall(expr)}
    assert used - sample_names(live) == set()
    exposed = {name for name in live if not name.endswith("_created")}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert exposed - shown == set()


def test_alert_rules_use_live_metrics(live: dict[str, str]) -> None:
    """Every alert rule is complete (name, expression, severity, summary) and queries only
    metrics the live AS or gateway expose; the docs list every alert."""
    rules = alert_rules()
    assert rules
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for rule in rules:
        assert isinstance(rule["alert"], str)
        assert f"`{rule['alert']}`" in docs
        assert isinstance(rule["labels"], dict)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert isinstance(rule["annotations"], dict)
        assert rule["annotations"]["summary"]
        names = set(_NAME.findall(str(rule["expr"])))
        assert names, rule["alert"]
        assert names - sample_names(live) == set(), rule["alert"]


def test_the_gateway_metric_names_on_docs_gateway_page() -> None:
    """docs/gateway.md links the metrics page rather than keeping a second list that drifts."""
    assert "(metrics.md)" in (ROOT / "docs" / "gateway.md").read_text()


def test_metrics_endpoint_content_type(demo_server: DemoServer) -> None:
    """The AS's /metrics is Prometheus text, without authentication."""
    r = httpx.get(demo_server.server.url + "/metrics", trust_env=False)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")

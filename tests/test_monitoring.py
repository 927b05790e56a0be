"""docs/monitoring/ cannot drift from the server: every metric a rule or a Grafana panel queries is
one a real server exposes, every exposed metric is on the dashboard and in docs/monitoring.md, and
the files have the shape Prometheus and Grafana load. When `promtool` is installed (Debian package
`prometheus`; never installed here) it checks the rules and the config and runs the alerts' unit
tests (docs/monitoring/rules_test.yml)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import ROOT, http

MONITORING = ROOT / "docs" / "monitoring"
RULES = MONITORING / "rules.yml"
RULES_TEST = MONITORING / "rules_test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
DOC = ROOT / "docs" / "monitoring.md"
PROMTOOL = shutil.which("promtool")
#: CI provides promtool and sets this, so a missing one fails there instead of skipping
if PROMTOOL is None and os.environ.get("DYNWORK_REQUIRE_PROMTOOL"):
    raise RuntimeError("DYNWORK_REQUIRE_PROMTOOL is set but promtool is not on PATH")

#: series from outside dynwork the rules may use: Prometheus's own `up`
OUTSIDE = re.compile(r"up")
#: the alerts issue 12 asks for, by what they watch; renaming one must be deliberate
REQUIRED_ALERTS = {
    "DynworkOldestJobWaiting", "DynworkFailureRateHigh", "DynworkPeerUnreachable", "DynworkLaunchesSuspended",
    "DynworkLaunchBackoffLong", "DynworkDiskAlmostFull", "DynworkServerDown", "DynworkHealthProblems",
    "DynworkQueueFull",
}  # fmt: skip
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"(\d+(ms|[smhdwy]))+")
RECORD_NAME = re.compile(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")

PROMQL_FUNCTIONS = frozenset(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
    floor histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters double_exponential_smoothing hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi predict_linear
    present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc sort_by_label
    sort_by_label_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
    """.split()  # noqa: SIM905  # a word list reads better than 80 quoted strings
)
PROMQL_KEYWORDS = frozenset(
    """sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
    by without on ignoring group_left group_right bool offset and or unless atan2 inf nan start end""".split()  # noqa: SIM905
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:$.])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries, Grafana's $__rate_interval included
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in PROMQL_KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            assert word in PROMQL_FUNCTIONS, f"not a PromQL function: {word} in {expr}"
            continue
        names.add(word)
    return names


def test_metric_names_leaves_out_everything_but_metrics():
    expr = (
        'histogram_quantile(0.9, sum by (le, server) (rate(a_bucket{x="y", z=~"$server"}[$__rate_interval])))'
        " > on (instance) group_left (b) c offset 1h and d:rec:rate5m * 1e3 unless max(e) without (state) > bool 2"
    )
    assert metric_names(expr) == {"a_bucket", "c", "d:rec:rate5m", "e"}
    with pytest.raises(AssertionError, match="not a PromQL function"):
        metric_names("rates(a[5m])")


def series_names(exposition: str) -> dict[str, set[str]]:
    """Family name -> the series names Prometheus stores for it (counters `_total`, histograms
    `_bucket`/`_count`/`_sum`), from prometheus_client's own parser."""
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum"),
        }
        names = {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        families[family.name] = names | {sample.name for sample in family.samples}
    return families


@pytest.fixture(scope="module")
def exposed(shared_cluster) -> dict[str, set[str]]:
    """What a real server (with a peer, so dynwork_peer_reachable is there) exposes at /metrics."""
    resp = http("GET", shared_cluster.a.url + "/metrics")
    assert resp.status == 200, resp.body[:200]
    families = series_names(resp.body.decode())
    assert "dynwork_peer_reachable" in families and "dynwork_worker_rate" in families, sorted(families)
    return families


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert isinstance(document, dict) and set(document) == {"groups"}, "rules.yml: only `groups` at the top"
    groups = document["groups"]
    assert isinstance(groups, list) and groups
    return groups


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules() for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            label_values = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            exprs.append(label_values.group(1) if label_values else query)
    return exprs


# -- rules.yml -----------------------------------------------------------------------------------
def test_rules_have_the_shape_prometheus_loads():
    group_names = [group.get("name") for group in load_rules()]
    assert all(group_names) and len(set(group_names)) == len(group_names), group_names
    for group in load_rules():
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        assert isinstance(group["rules"], list) and group["rules"], group["name"]
    alerts, records = [], []
    for rule in all_rules():
        assert ("alert" in rule) != ("record" in rule), rule
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), rule
        if "record" in rule:
            records.append(rule["record"])
            assert RECORD_NAME.fullmatch(rule["record"]), f"level:metric:operations: {rule['record']}"
            assert set(rule) <= {"record", "expr", "labels"}, rule["record"]
            continue
        alerts.append(rule["alert"])
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        assert DURATION.fullmatch(str(rule.get("for", ""))), f"{rule['alert']}: `for:` missing or malformed"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
    assert len(set(alerts)) == len(alerts) and len(set(records)) == len(records)
    assert REQUIRED_ALERTS.issubset(alerts), REQUIRED_ALERTS - set(alerts)


def test_rules_use_only_metrics_the_server_exposes(exposed):
    known = set().union(*exposed.values()) | {rule["record"] for rule in all_rules() if "record" in rule}
    unknown = [
        f"{rule.get('alert') or rule['record']}: {name}"
        for rule in all_rules()
        for name in sorted(metric_names(rule["expr"]))
        if name not in known and not OUTSIDE.fullmatch(name)
    ]
    assert not unknown, f"metrics no server exposes: {unknown}"


def test_rule_unit_tests_name_alerts_that_exist():
    document = yaml.safe_load(RULES_TEST.read_text())
    assert document["rule_files"] == ["rules.yml"]
    alerts = {rule["alert"] for rule in all_rules() if "alert" in rule}
    tested = {case["alertname"] for test in document["tests"] for case in test["alert_rule_test"]}
    assert tested <= alerts, tested - alerts
    assert REQUIRED_ALERTS.issubset(tested), REQUIRED_ALERTS - tested


# -- prometheus.yml ------------------------------------------------------------------------------
def test_scrape_config_finds_the_servers_by_tag_and_labels_them():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert len(jobs) == len(config["scrape_configs"])
    aws = jobs["dynwork"]
    assert aws["authorization"]["type"] == "Bearer" and aws["authorization"]["credentials_file"]
    (sd,) = aws["ec2_sd_configs"]
    filters = {f["name"]: f["values"] for f in sd["filters"]}
    assert filters["tag:dynwork:role"] == ["server"] and "tag:dynwork:cluster" in filters
    assert sd["port"] == 8001
    targets = {relabel["target_label"] for relabel in aws["relabel_configs"]}
    assert {"server", "cluster"} <= targets
    local = jobs["dynwork-local"]["static_configs"]
    assert [t for group in local for t in group["targets"]] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert all({"server", "cluster"} <= set(group["labels"]) for group in local)
    # the rules find the servers' `up` by job name
    assert all(re.fullmatch("dynwork.*", name) for name in jobs)


# -- grafana-dashboard.json ----------------------------------------------------------------------
def test_dashboard_imports_anywhere_and_has_unique_panel_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    assert {"title", "uid", "panels", "schemaVersion", "templating", "time", "__inputs"} <= set(dashboard)
    assert 36 <= dashboard["schemaVersion"] <= 41 and dashboard["id"] is None
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), ids
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == datasource and panel["targets"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource and target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == datasource, variable["name"]


def test_dashboard_queries_only_metrics_the_server_exposes(exposed):
    dashboard = json.loads(DASHBOARD.read_text())
    known = set().union(*exposed.values()) | {"up"}
    unknown = [f"{name} in {expr}" for expr in dashboard_exprs(dashboard) for name in metric_names(expr) - known]
    assert not unknown, f"metrics no server exposes: {unknown}"


def test_every_metric_is_on_the_dashboard_and_in_the_docs(exposed):
    """A metric the server gains must reach the dashboard and docs/monitoring.md too."""
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs(json.loads(DASHBOARD.read_text()))))
    doc = DOC.read_text()
    for family, names in exposed.items():
        assert names & used, f"{family} is on no dashboard panel"
        stored = sorted(names)[0] if len(names) == 1 else family
        assert f"`{stored}`" in doc, f"{stored} is not in docs/monitoring.md"
    for rule in all_rules():
        if "alert" in rule:
            assert f"`{rule['alert']}`" in doc, f"alert {rule['alert']} is not in docs/monitoring.md"


# -- promtool, when installed ---------------------------------------------------------------------
def promtool(*args: str | Path) -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian package `prometheus`)")
def test_promtool_checks_the_rules_and_the_config():
    promtool("check", "rules", RULES)
    # --syntax-only: the config names a credentials file that exists only on the Prometheus host
    promtool("check", "config", "--syntax-only", PROMETHEUS_CONFIG)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian package `prometheus`)")
def test_promtool_unit_tests_of_the_alerts(tmp_path: Path):
    """rules_test.yml's cases, against the rules without annotations (promtool would compare the prose)."""
    groups = load_rules()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
    promtool("test", "rules", tmp_path / "rules_test.yml")

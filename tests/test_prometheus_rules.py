"""Alert rules and dashboard, checked with promtool (Debian's `prometheus` package) offline.

- `promtool check rules` on deploy/prometheus/alerts.yml, `promtool test rules` on its
  unit tests (alerts.test.yml: each alert fires on its scenario, a healthy pair of
  workers fires nothing, and of two releases only the unhealthy one is alerted on);
- every selector names the job and every aggregation keeps namespace and job (and the
  consumer group for lag), so releases sharing a Prometheus stay apart;
- every PromQL query of the Grafana dashboard parses (promtool checks them as recording
  rules, Grafana's variables substituted);
- every metric the rules and the dashboard use is one the worker exports (worker/ops/metrics.py);
- every alert links its runbook with an absolute `runbook_url`, all under one base, each
  anchor a heading of deploy/OPERATIONS.md;
- the compose stack's prometheus.yml passes `promtool check config`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "sentiment-worker.json"
OPERATIONS = REPO / "deploy" / "OPERATIONS.md"
# Series every Prometheus target has, besides the worker's own: `up`, and the process
# collector of prometheus_client (Linux), which the worker's /metrics includes.
STANDARD = {"up", "process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes"}
# The base of every runbook_url (the Helm chart replaces it with prometheusRule.runbookBaseUrl).
RUNBOOK_BASE = "https://git.example.com/platform/sentiment-worker/blob/main/deploy/OPERATIONS.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: apt-get install prometheus (.ci/run installs it)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def dashboard_queries(rate_interval: str = "5m") -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, Grafana variables replaced by concrete values."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", rate_interval)
                .replace("$job", "sentiment-worker")
                .replace("$namespace", ".*")
                .replace("$instance", ".*")
            )
            out.append((panel["title"], expr))
    return out


def exported_metric_names() -> set[str]:
    """Sample names the worker can export: counters get _total, histograms _bucket/_sum/_count."""
    from prometheus_client.metrics import MetricWrapperBase

    from worker.ops import metrics

    names = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


def metric_names_in(expr: str) -> set[str]:
    """Identifiers of metrics in a PromQL expression (function names and label names excluded)."""
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    keywords = {"and", "or", "unless", "bool", "offset", "le", "vector", "inf", "nan"}
    return {w for w in words if w not in keywords and not w.isdigit()}


def runbook_anchors() -> set[str]:
    """The anchors of deploy/OPERATIONS.md's headings, as a browser finds them."""
    return {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }


def test_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rules_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_alert_is_unit_tested_and_documented() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    # what the issue asks for: lag growing, dead-letter rate, no output while input arrives, worker down
    assert {"SentimentWorkerLagGrowing", "SentimentWorkerDeadLetterRate", "SentimentWorkerNoOutput",
            "SentimentWorkerDown"} <= alerts
    # exactly-once trouble and idle replicas
    assert {"SentimentWorkerTransactionsFenced", "SentimentWorkerTransactionsAborted",
            "SentimentWorkerNoPartitions"} <= alerts
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert fired == alerts, f"alerts never shown to fire in alerts.test.yml: {sorted(alerts - fired)}"
    headings = runbook_anchors()
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert "runbook" not in rule["annotations"], "the standard annotation is runbook_url"
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE + "#"), f"{rule['alert']}: {url} not under the one base"
        anchor = url.split("#", 1)[1]
        assert anchor in headings, f"{rule['alert']}: no heading #{anchor} in OPERATIONS.md"
    assert f"{RUNBOOK_BASE}|" in ALERTS.read_text(), "the header's sed line names the base"


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, its label matchers) for every vector selector in a PromQL expression."""
    names = metric_names_in(expr) - FUNCTIONS
    found = re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\{[^}]*\})?", expr)
    return [(m[1], m[2] or "") for m in found if m[1] in names]


def aggregations(expr: str) -> list[tuple[str, set[str]]]:
    """(operator, its `by` labels) for every aggregation in a PromQL expression."""
    found = re.finditer(r"\b(sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(", expr)
    return [(m[1], {label.strip() for label in (m[2] or "").split(",") if label.strip()}) for m in found]


def test_rules_keep_releases_apart() -> None:
    """Each selector names the job (the chart adds the namespace next to it); each aggregation
    keeps namespace and job, and lag its consumer group and topic: every alert names the
    deployment it is about, and one deployment's health never averages away another's trouble."""
    for rule in (r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]):
        expr = rule["expr"]
        found = selectors(expr)
        assert found, rule["alert"]
        for metric, matchers in found:
            assert 'job="sentiment-worker"' in matchers, f"{rule['alert']}: {metric} without the job"
        for op, by in aggregations(expr):
            assert {"namespace", "job"} <= by, f"{rule['alert']}: {op} by {sorted(by)} drops namespace or job"
        if "consumer_lag" in expr:
            assert any({"group", "topic"} <= by for _, by in aggregations(expr)), f"{rule['alert']}: lag not per group"
    assert selectors('max by (a) (x_total{job="j", b="c"}) / y') == [("x_total", '{job="j", b="c"}'), ("y", "")]
    assert aggregations("sum(rate(a[5m])) / max by (x, y) (b)") == [("sum", set()), ("max", {"x", "y"})]


def test_an_unhealthy_release_is_alerted_on_alone() -> None:
    """alerts.test.yml has scenarios with two releases side by side: two namespaces, and two
    consumer groups in one namespace. What fires names one namespace (one group) only."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]

    def values(label: str, test: dict) -> set[str]:
        return {v for s in test["input_series"] for v in re.findall(rf'\b{label}="([^"]+)"', s["series"])}

    def fired(test: dict) -> list[dict[str, str]]:
        return [a["exp_labels"] for case in test["alert_rule_test"] for a in case["exp_alerts"]]

    namespaces = [t for t in tests if len(values("namespace", t)) >= 2]
    groups = [t for t in tests if len(values("namespace", t)) == 1 and len(values("group", t)) >= 2]
    assert namespaces and groups
    for test in namespaces:
        alerts = fired(test)
        assert len(alerts) >= 4 and len({a["namespace"] for a in alerts}) == 1
        assert {"SentimentWorkerNoOutput", "SentimentWorkerLagGrowing"} <= {
            case["alertname"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    for test in groups:
        alerts = fired(test)
        assert alerts and len({a["group"] for a in alerts}) == 1


def test_rules_and_dashboard_use_exported_metrics() -> None:
    exported = exported_metric_names()
    assert "sentiment_worker_events_scored_total" in exported  # the helper sees the real registry
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    exprs = [(r["alert"], r["expr"]) for r in rules] + dashboard_queries()
    for where, expr in exprs:
        unknown = metric_names_in(expr) - exported - STANDARD - FUNCTIONS
        assert not unknown, f"{where}: unknown metric(s) {sorted(unknown)} in {expr}"


def test_dashboard_covers_the_operators_questions() -> None:
    doc = json.loads(DASHBOARD.read_text())
    used = " ".join(expr for _, expr in dashboard_queries())
    for metric in (
        "sentiment_worker_events_scored_total",  # throughput
        "sentiment_worker_end_to_end_latency_seconds_bucket",  # latency percentiles
        "sentiment_worker_inference_seconds_bucket",
        "sentiment_worker_batch_size_events_bucket",  # batch shape
        "sentiment_worker_batch_tokens_bucket",
        "sentiment_worker_consumer_lag_events",  # lag
        "sentiment_worker_events_dead_lettered_total",  # dead letters
        "sentiment_worker_publish_errors_total",  # errors
        "sentiment_worker_pipeline_failures_total",
        "sentiment_worker_model_info",
        "sentiment_worker_consumer_lag_seconds",  # lag in seconds
        "sentiment_worker_assigned_partitions",
        "process_cpu_seconds_total",  # resources: CPU, RSS, GPU memory, restarts
        "process_resident_memory_bytes",
        "sentiment_worker_gpu_memory_bytes",
        "process_start_time_seconds",
    ):
        assert metric in used, f"dashboard lacks {metric}"
    assert "histogram_quantile(0.99" in used and "histogram_quantile(0.5" in used
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert doc["uid"] == "sentiment-worker"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    # one release at a time: job and namespace (All where there is none, as in compose), then replicas
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "job", "namespace", "instance"]
    namespace = variables["namespace"]
    assert namespace["query"]["query"] == 'label_values(sentiment_worker_model_info{job="$job"}, namespace)'
    assert namespace["includeAll"] and namespace["allValue"] == ".*"
    assert 'namespace=~"$namespace"' in variables["instance"]["query"]["query"]
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            for matchers in re.findall(r"\{[^}]*\}", target["expr"]):
                for matcher in ('job="$job"', 'namespace=~"$namespace"', 'instance=~"$instance"'):
                    assert matcher in matchers, f"{panel['title']}: {target['expr']} lacks {matcher}"
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    # panels don't overlap on Grafana's 24-column grid
    cells: set[tuple[int, int]] = set()
    for panel in doc["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        box = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not box & cells, f"panel {panel['title']} overlaps another"
        cells |= box


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())
    ]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_prometheus_config() -> None:
    out = promtool("check", "config", str(REPO / "deploy" / "compose" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "sentiment-worker"]
    assert job["dns_sd_configs"][0]["names"] == ["worker"]  # the compose service, every replica


FUNCTIONS = {
    "sum", "rate", "increase", "deriv", "changes", "histogram_quantile", "max", "avg", "count",
    "absent", "min", "topk", "clamp_min",
}


@pytest.mark.parametrize("expr,expected", [
    ('sum by (topic) (rate(a_total{x="y"}[5m])) / b', {"a_total", "b"}),
    ('histogram_quantile(0.9, sum by (le) (rate(c_bucket[1m])))', {"c_bucket"}),
])
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names_in(expr) - FUNCTIONS == expected

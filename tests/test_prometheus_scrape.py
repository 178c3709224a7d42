"""A real Prometheus (Debian's `prometheus` package) scrapes a running worker.

The worker runs against the session's Kafka broker; Prometheus scrapes its /metrics every
second, loads the alert rules of deploy/prometheus/alerts.yml, and everything is asserted
through Prometheus' HTTP API: the target is up, the series exist, the counters move to
exactly what was produced, the dashboard's queries return data, and every alert rule
evaluates without error against the real series.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

import orjson
import pytest
import yaml

from tests.conftest import REPO
from tests.kafka_helpers import free_port, produce
from tests.test_prometheus_rules import dashboard_queries

pytestmark = pytest.mark.kafka
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
GOOD, BAD = 120, 3


class Prometheus:
    def __init__(self, tmp_path: Path, web_port: int) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus missing: apt-get install prometheus (.ci/run installs it)"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "sentiment-worker", "static_configs": [{"targets": [f"127.0.0.1:{web_port}"]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log_path = tmp_path / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def api(self, path: str, **params: str) -> Any:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def value(self, expr: str) -> Optional[float]:
        """The single value of an instant query; None while there is no series."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1])


async def poll(what: str, check: Callable[[], Any], timeout_s: float, describe: Callable[[], str] = lambda: "") -> Any:
    """Call `check` until it returns something truthy (polling the HTTP API, no blind sleeps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except urllib.error.URLError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} {describe()}")
        await asyncio.sleep(0.25)


@pytest.mark.timeout(120)
async def test_prometheus_scrapes_worker_and_series_move(worker_factory, bootstrap, topics, tmp_path, tiny_model) -> None:
    worker = worker_factory(**topics, batch_max_size=16, batch_max_wait_ms=50, max_length=64).wait_ready()
    prometheus = Prometheus(tmp_path, worker.web_port)
    try:
        job = '{job="sentiment-worker"}'
        await poll("the worker's target to be up", lambda: prometheus.value(f"up{job}") == 1.0, 30,
                   lambda: prometheus.log_path.read_text()[-2000:])

        # Before any input: the series exist, at zero.
        assert prometheus.value(f"sentiment_worker_events_scored_total{job}") == 0.0
        assert prometheus.value(f"sentiment_worker_events_consumed_total{job}") == 0.0
        info = prometheus.query(f"sentiment_worker_model_info{job}")
        assert len(info) == 1 and info[0]["value"][1] == "1"
        labels = info[0]["metric"]
        assert labels["name"] == str(tiny_model) and labels["revision"].startswith("sha256:")
        assert labels["device"] == "cpu" and labels["precision"] == "fp32"

        records = [(f"k{i % 11}".encode(), orjson.dumps({"text": f"event number {i} was great", "id": f"e{i}"}))
                   for i in range(GOOD)]
        records += [(b"bad", b"\xff\xfe not utf-8"), (b"bad", b"{not json"), (b"bad", b'{"text": 42}')]
        await produce(bootstrap, topics["input_topic"], records)

        # The counters move to exactly what was produced.
        await poll(f"{GOOD} scored events in Prometheus",
                   lambda: prometheus.value(f"sentiment_worker_events_scored_total{job}") == GOOD, 45,
                   lambda: f"(at {prometheus.value(f'sentiment_worker_events_scored_total{job}')})")
        await poll(f"{GOOD + BAD} consumed events",
                   lambda: prometheus.value(f"sentiment_worker_events_consumed_total{job}") == GOOD + BAD, 15)
        await poll(f"{BAD} dead-lettered events",
                   lambda: prometheus.value(f"sum(sentiment_worker_events_dead_lettered_total{job})") == BAD, 15)
        reasons = {r["metric"]["reason"] for r in prometheus.query(f"sentiment_worker_events_dead_lettered_total{job}")}
        assert reasons, "dead letters carry a reason label"

        # Histograms observed every batch / event.
        batches = prometheus.value(f"sentiment_worker_batch_size_events_count{job}")
        assert batches and batches >= GOOD / 16
        assert prometheus.value(f"sentiment_worker_batch_size_events_sum{job}") >= GOOD
        assert prometheus.value(f"sentiment_worker_inference_seconds_count{job}") >= 1
        assert prometheus.value(f"sentiment_worker_inference_seconds_sum{job}") > 0
        assert prometheus.value(f"sentiment_worker_end_to_end_latency_seconds_count{job}") == GOOD
        assert prometheus.value(f'sentiment_worker_end_to_end_latency_seconds_bucket{{job="sentiment-worker", le="+Inf"}}') == GOOD
        assert prometheus.value(f'sentiment_worker_tokens_total{{job="sentiment-worker", kind="padded"}}') > 0
        assert prometheus.value(f"sentiment_worker_in_flight_events{job}") == 0.0

        # Lag per partition (the worker's 5 s timer), back to zero once everything is acked.
        lag = await poll("consumer lag series at zero", lambda: (
            (rows := prometheus.query(f'sentiment_worker_consumer_lag_events{{job="sentiment-worker", topic="{topics["input_topic"]}"}}'))
            and all(float(r["value"][1]) == 0 for r in rows) and rows), 20)
        assert {r["metric"]["partition"] for r in lag} == {"0", "1", "2", "3"}
        assert {r["metric"]["group"] for r in lag} == {topics["group_id"]}  # what the lag alerts aggregate by

        # The counter moved between scrapes while events flowed (it was scraped at 0 before).
        scored_series = f"sentiment_worker_events_scored_total{job}"
        moved = prometheus.value(f"max_over_time({scored_series}[2m]) - min_over_time({scored_series}[2m])")
        assert moved == GOOD

        # Every dashboard query runs; those about the traffic above return data. A rate needs
        # two scrapes of a series, and labelled series appear at their first increment: poll.
        allowed_empty = ("publish_errors", "transactions_total")  # no failures, at-least-once mode
        allowed_empty += ("gpu_memory_bytes",)  # a CPU worker
        # lag in seconds: required as soon as the worker sets the gauge (not only defines it)
        sets_lag_seconds = any(
            "CONSUMER_LAG_SECONDS" in f.read_text() for f in (REPO / "worker").rglob("*.py") if f.name != "metrics.py"
        )
        if not sets_lag_seconds:
            allowed_empty += ("consumer_lag_seconds",)

        def dashboard_gaps() -> list[str]:
            empty = [f"{t}: {e}" for t, e in dashboard_queries(rate_interval="1m") if not prometheus.query(e)]
            return [e for e in empty if not any(a in e for a in allowed_empty)]

        gaps = dashboard_gaps()
        deadline = time.monotonic() + 30
        while gaps and time.monotonic() < deadline:
            await asyncio.sleep(1)
            gaps = dashboard_gaps()
        assert not gaps, "dashboard queries without data:\n" + "\n".join(gaps)

        # Every alert rule evaluates cleanly against the real series.
        def rules_evaluated() -> Optional[list[dict[str, Any]]]:
            groups = prometheus.api("rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            done = rules and all(not r["lastEvaluation"].startswith("0001-") for r in rules)
            return rules if done else None

        rules = await poll("alert rules to be evaluated", rules_evaluated, 15)
        assert len(rules) == len([r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]])
        broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not broken, broken
        active = [(a["labels"]["alertname"], a["state"]) for a in prometheus.api("alerts")["data"]["alerts"]]
        assert not active, f"alerts pending or firing on a healthy worker: {active}"
    finally:
        prometheus.stop()

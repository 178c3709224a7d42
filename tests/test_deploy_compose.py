"""The docker compose stack (deploy/compose), checked without a Docker engine.

deploy/compose/check is a small Go program around compose-go, the loader Docker Compose v2
itself uses: it validates compose.yaml against the Compose specification, interpolates the
variables, checks references (depends_on, volumes) and prints the resolved project, like
`docker compose config`. The tests build it with the machine's Go (modules from the Go
module proxy) and assert on the resolved project: services, scaling, the start command,
the files Prometheus and Grafana mount.
"""

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

from tests.conftest import REPO

COMPOSE = REPO / "deploy" / "compose"
CHECKER = COMPOSE / "check"


@pytest.fixture(scope="module")
def compose_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: compose-go can't be built (the YAML-level checks below still run)")
    binary = tmp_path_factory.mktemp("compose-check") / "compose-check"
    out = subprocess.run([go, "build", "-o", str(binary), "."], cwd=CHECKER, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"go build failed:\n{out.stderr}"
    return binary


def resolve(binary: Path, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not re.match(r"(INPUT|OUTPUT)_TOPIC|PARTITIONS|MODEL|WORKER_REPLICAS|GROUP_ID", k)}
    out = subprocess.run(
        [str(binary), str(COMPOSE / "compose.yaml")], cwd=COMPOSE, env={**clean, **env},
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_file_is_valid(compose_check: Path) -> None:
    project = resolve(compose_check)
    services = project["services"]
    assert set(services) == {"kafka", "topics", "model", "worker", "prometheus", "grafana"}
    for name, svc in services.items():
        image = svc["image"]
        assert re.search(r":v?[0-9]+\.[0-9]+\.[0-9]+$", image) or name in ("worker", "model"), f"{name}: unpinned image {image}"
        assert "latest" not in image
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_worker_service(compose_check: Path) -> None:
    worker = resolve(compose_check)["services"]["worker"]
    # `docker compose up --scale worker=N`: no fixed name, no host port.
    assert "container_name" not in worker and not worker.get("ports")
    # the image's ENTRYPOINT/CMD (`sentiment-worker run`) is not overridden
    assert worker["command"] is None and worker["entrypoint"] is None
    build = worker["build"]
    assert build["target"] == "cpu"
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == REPO / "deploy" / "docker" / "Dockerfile"
    env = worker["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092" and env["CREATE_TOPICS"] == "false"
    assert env["INPUT_TOPIC"] == "sentiment-input" and env["OUTPUT_TOPIC"] == "sentiment-output"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["model"]["condition"] == "service_completed_successfully"
    grace = worker["stop_grace_period"]
    assert grace in {"1m0s", "60s"} or int(grace.rstrip("s")) >= 45
    assert worker["deploy"]["replicas"] == 2


def test_variables_flow_through(compose_check: Path) -> None:
    project = resolve(compose_check, WORKER_REPLICAS="4", PARTITIONS="8", INPUT_TOPIC="reviews", BAKE_MODEL="1")
    worker = project["services"]["worker"]
    assert worker["deploy"]["replicas"] == 4
    assert worker["environment"]["TOPIC_PARTITIONS"] == "8" and worker["environment"]["INPUT_TOPIC"] == "reviews"
    assert worker["build"]["args"]["BAKE_MODEL"] == "1"
    topics = project["services"]["topics"]
    assert topics["environment"]["PARTITIONS"] == "8"
    assert topics["environment"]["INPUT_TOPIC"] == "reviews"


def test_mounted_files_exist(compose_check: Path) -> None:
    services = resolve(compose_check)["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts missing {volume['source']}"
    prom_mounts = {v["target"]: Path(v["source"]) for v in services["prometheus"]["volumes"] if v["type"] == "bind"}
    assert prom_mounts["/etc/prometheus/rules/sentiment-worker.yml"] == REPO / "deploy" / "prometheus" / "alerts.yml"
    graf_mounts = {v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    dashboards = graf_mounts["/etc/grafana/dashboards"]
    assert (dashboards / "sentiment-worker.json").is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/etc/grafana/dashboards/sentiment-worker.json"


def test_grafana_provisioning_matches() -> None:
    """Always runs (no Go needed): the provisioning files point where compose mounts things."""
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    provisioning = COMPOSE / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    provider = yaml.safe_load((provisioning / "dashboards" / "sentiment-worker.yaml").read_text())["providers"][0]
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert f"../grafana:{provider['options']['path']}:ro" in grafana_volumes
    dashboard = json.loads((REPO / "deploy" / "grafana" / "sentiment-worker.json").read_text())
    assert dashboard["templating"]["list"][0]["query"] == datasource["type"]
    # the scrape job name the alert rules and dashboard expect
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert "sentiment-worker" in {j["job_name"] for j in prom["scrape_configs"]}
    assert prom["rule_files"] == ["rules/*.yml"]
    assert any(v.endswith(":/etc/prometheus/rules/sentiment-worker.yml:ro") for v in compose["services"]["prometheus"]["volumes"])


def test_model_is_downloaded_once_and_shared(compose_check: Path) -> None:
    """One model service fills the volume; replicas start after it and only read it."""
    services = resolve(compose_check)["services"]
    model, worker = services["model"], services["worker"]
    # the worker image's own fetcher, once, bounded so `up` reports a hub that never answers
    assert model["image"] == worker["image"] and model["build"] == worker["build"]
    assert model["entrypoint"] == ["fetch-model"] and model["command"][0] == "download"
    assert "--attempts" in model["command"] and model["restart"] == "no"
    assert "deploy" not in model or model["deploy"].get("replicas") in (None, 1)
    volume = lambda svc: next(v for v in svc["volumes"] if v["target"] == "/opt/huggingface")  # noqa: E731
    assert volume(model)["source"] == volume(worker)["source"] == "huggingface"
    assert not volume(model).get("read_only") and volume(worker)["read_only"] is True
    for key in ("MODEL", "MODEL_REVISION", "HF_HOME"):
        assert model["environment"][key] == worker["environment"][key]
    assert worker["environment"]["HF_HUB_OFFLINE"] == "1"  # no replica ever downloads
    assert worker["environment"]["HF_HOME"] == "/opt/huggingface"
    assert re.fullmatch(r"[0-9a-f]{40}", worker["environment"]["MODEL_REVISION"])
    assert worker["build"]["args"]["MODEL_REVISION"] == worker["environment"]["MODEL_REVISION"]
    # a model of your own still reaches both
    project = resolve(compose_check, MODEL="org/other", MODEL_REVISION="b" * 40)
    assert project["services"]["model"]["environment"]["MODEL"] == project["services"]["worker"]["environment"]["MODEL"] == "org/other"


def test_health_checks_limits_and_no_default_admin(compose_check: Path) -> None:
    services = resolve(compose_check)["services"]
    for name in ("kafka", "prometheus", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name, svc in services.items():
        limits = svc["deploy"]["resources"]["limits"]
        assert limits.get("memory") and limits.get("cpus"), f"{name} has no resource limits"
    assert float(services["worker"]["deploy"]["resources"]["limits"]["cpus"]) == float(services["worker"]["environment"]["TORCH_THREADS"])
    grafana = services["grafana"]["environment"]
    assert grafana.get("GF_SECURITY_ADMIN_PASSWORD") in (None, "") or grafana["GF_SECURITY_ADMIN_PASSWORD"] != "admin"
    assert grafana["GF_AUTH_DISABLE_LOGIN_FORM"] == "true" and grafana["GF_AUTH_BASIC_ENABLED"] == "false"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_model_defaults_agree_across_packagings() -> None:
    """Image, compose and Helm chart deliver the same model at the same pinned commit by default."""
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    image = {m[0]: m[1] for m in re.findall(r"^ARG (MODEL|MODEL_REVISION)=(\S+)$", dockerfile, re.M)}
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["x-model"]
    chart = yaml.safe_load((REPO / "deploy" / "helm" / "sentiment-worker" / "values.yaml").read_text())["model"]
    defaults = {re.sub(r"\$\{\w+:-(.*)\}", r"\1", compose[k]) for k in ("MODEL",)}
    assert defaults == {image["MODEL"]} == {chart["name"]}
    assert re.sub(r"\$\{\w+:-(.*)\}", r"\1", compose["MODEL_REVISION"]) == image["MODEL_REVISION"] == chart["revision"]
    assert chart["image"]["reference"].endswith(":" + chart["revision"])


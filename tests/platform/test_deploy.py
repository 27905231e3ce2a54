"""Deployment files, checked by parsing (no docker engine on this machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _memory_gib(value: str) -> float:
    units = {"k": 2**-20, "m": 2**-10, "g": 1.0}
    v = value.strip().lower().removesuffix("b").removesuffix("i")
    return float(v[:-1]) * units[v[-1]] if v[-1] in units else float(v) / 2**30


def test_compose_services_healthchecks_and_budget() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    # The default services (no profile): the task's single machine and its budget.
    services = {k: v for k, v in compose["services"].items() if "profiles" not in v}
    assert set(services) == {"redis", "log-redis", "feature-loader", "api"}
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    log = services["log-redis"]["command"]
    assert log[log.index("--appendonly") + 1] == "yes"  # the log survives a restart
    assert "redis://log-redis:6379/0" in services["api"]["command"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    loader = services["feature-loader"]
    assert loader["restart"] == "no" and loader["command"][:3] == ["mlsys", "features", "load"]
    assert loader["depends_on"]["redis"]["condition"] == "service_healthy"
    api = services["api"]
    assert api["depends_on"]["feature-loader"]["condition"] == "service_completed_successfully"
    assert api["command"][:2] == ["mlsys", "serve"]
    limits = [s["deploy"]["resources"]["limits"] for s in services.values()]
    assert sum(float(x["cpus"]) for x in limits) == 4.0
    assert sum(_memory_gib(x["memory"]) for x in limits) == 4.0


def test_dockerfile_cpu_torch_non_root_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.11")
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/healthz" in text
    cmd = [line for line in lines if line.startswith("CMD")][-1]  # the last CMD is the image's
    assert '"serve"' in cmd
    # the pinned torch in the image is the one the project pins
    assert "torch==2.13.0" in (ROOT / "pyproject.toml").read_text()


def test_dockerignore_keeps_data_and_envs_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "artifacts", "*.parquet", "*.pt"} <= ignored


def _exported_metric_names() -> set[str]:
    """Every series name the API and `mlsys monitor run` can export."""
    from prometheus_client import REGISTRY, CollectorRegistry

    import mlsys.platform.metrics  # noqa: F401  (registers the API's metrics)
    from mlsys.compose.drift_watch import Watcher

    monitor = CollectorRegistry()
    Watcher("m", 100, 0.0, None, monitor)
    names: set[str] = set()
    for registry in (REGISTRY, monitor):
        for family in registry.collect():
            names.add(family.name)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
            names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def _metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads; it must parse (promtool's own parser is
    not on PyPI; `promql-parser` binds the Rust port, and promtool runs too where present)."""
    import re

    import promql_parser

    promql_parser.parse(expr)  # ValueError on a syntax error
    return set(re.findall(r"\b(mlsys_[a-z_]+)", expr))


def test_alert_rules_are_well_formed_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exported = _exported_metric_names()
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        used = _metrics_in(rule["expr"])
        assert used and used <= exported, (rule["alert"], used - exported)
    names = {r["alert"] for r in alerts}
    assert {"MlsysFeatureDrift", "MlsysOutcomeDrift", "MlsysRecommendLatencyHigh"} <= names


def test_promtool_accepts_the_rules() -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt install prometheus)")
    for name in ("alerts.yml", "prometheus.yml"):
        verb = "rules" if name == "alerts.yml" else "config"
        done = subprocess.run([promtool, "check", verb, str(ROOT / "deploy/prometheus" / name)],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_dashboard_panels_query_exported_metrics() -> None:
    import json

    dashboard = json.loads((ROOT / "deploy/grafana/mlsys-dashboard.json").read_text())
    exported = _exported_metric_names()
    titles = [p["title"] for p in dashboard["panels"]]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = _metrics_in(target["expr"])
            assert used and used <= exported, (panel["title"], used - exported)
    for topic in ("latency", "Throughput", "Errors", "CTR", "drift"):
        assert any(topic in t for t in titles), topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_replicas_profile_puts_several_apis_behind_the_proxy() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    replica, proxy = compose["api-replica"], compose["proxy"]
    assert replica["profiles"] == proxy["profiles"] == ["replicas"]
    assert replica["deploy"]["replicas"] >= 2 and "ports" not in replica  # only via the proxy
    assert replica["command"][:2] == ["mlsys", "serve"] and "/readyz" in str(replica["healthcheck"])
    assert proxy["depends_on"]["api-replica"]["condition"] == "service_healthy"
    conf = (ROOT / "deploy/nginx/nginx.conf").read_text()
    assert "server api-replica:8000" in conf and "proxy_pass http://mlsys_api" in conf
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]


def _manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((ROOT / "deploy/k8s" / name).read_text()) if d]
    return docs


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    import kubernetes_validate

    files = {p.name for p in (ROOT / "deploy/k8s").glob("*.yaml")} - {"kustomization.yaml"}
    listed = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())["resources"]
    assert set(listed) == files  # nothing written that `kubectl apply -k` would skip
    for doc in _manifests():
        kubernetes_validate.validate(doc, "1.37.0", strict=True)  # raises on any error


def test_kubernetes_api_is_probed_scaled_and_protected() -> None:
    by_kind: dict[tuple[str, str], dict[str, Any]] = {
        (d["kind"], d["metadata"]["name"]): d for d in _manifests()
    }
    api = by_kind[("Deployment", "mlsys-api")]
    pod = api["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][:4] == ["mlsys", "serve", "--model", "models:/ranknet@champion"]
    service = by_kind[("Service", "mlsys-api")]
    assert service["spec"]["selector"].items() <= labels.items()
    hpa = by_kind[("HorizontalPodAutoscaler", "mlsys-api")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mlsys-api" and hpa["spec"]["minReplicas"] >= 2
    pdb = by_kind[("PodDisruptionBudget", "mlsys-api")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    job = by_kind[("Job", "mlsys-feature-loader")]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
        "mlsys",
        "features",
        "load",
    ]
    for doc in by_kind.values():  # every pod: non-root, with limits
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for c in spec["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), doc["metadata"]["name"]


def test_kubernetes_feature_store_is_a_redis_cluster_and_the_log_one_node() -> None:
    """The store: cluster-enabled nodes, as many as the create Job joins (masters x (1 +
    replicas)), announcing stable hostnames; the log: one append-only node on a volume."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in _manifests()}
    store = by_kind[("StatefulSet", "mlsys-redis")]
    args = store["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes"
    assert args[args.index("--cluster-preferred-endpoint-type") + 1] == "hostname"
    assert by_kind[("Service", "mlsys-redis-nodes")]["spec"]["clusterIP"] == "None"
    create = by_kind[("Job", "mlsys-redis-cluster-create")]["spec"]["template"]["spec"]
    script = create["containers"][0]["args"][0]
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert "for i in 0 1 2 3 4 5" in script and store["spec"]["replicas"] == 6  # 3 x (1 + 1)
    log = by_kind[("StatefulSet", "mlsys-log-redis")]["spec"]["template"]["spec"]
    assert "--cluster-enabled" not in log["containers"][0]["args"]
    assert log["containers"][0]["args"][log["containers"][0]["args"].index("--appendonly") + 1] == (
        "yes"
    )
    config = by_kind[("ConfigMap", "mlsys-config")]["data"]
    assert config["MLSYS_REDIS_URL"].startswith("redis://mlsys-redis:")
    assert config["MLSYS_LOG_REDIS_URL"].startswith("redis://mlsys-log-redis:")


def test_the_config_map_sets_settings_that_mlsys_reads() -> None:
    """Every MLSYS_ variable the ConfigMap sets is a Settings field, and `mlsys serve` takes
    those without a flag from the environment."""
    from mlsys.cli import build_parser
    from mlsys.compose.cli.serving import serve_settings
    from mlsys.platform.settings import PREFIX, Settings

    config = next(d for d in _manifests() if d["kind"] == "ConfigMap")["data"]
    fields = {PREFIX + f.upper() for f in Settings.__dataclass_fields__}
    assert {k for k in config if k.startswith(PREFIX)} <= fields
    env = {"MLSYS_LOG_STREAM_MB": "12", "MLSYS_LOG_REDIS_URL": "redis://log:6379/0"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        args = build_parser().parse_args(["serve", "--model", "m"])
        settings = serve_settings(args, "m", None)
    assert settings.log_stream_mb == 12 and settings.log_redis_url == "redis://log:6379/0"

"""Deployment files, checked by parsing (no docker engine on this machine)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _memory_gib(value: str) -> float:
    units = {"k": 2**-20, "m": 2**-10, "g": 1.0}
    v = value.strip().lower().removesuffix("b").removesuffix("i")
    return float(v[:-1]) * units[v[-1]] if v[-1] in units else float(v) / 2**30


def test_compose_services_healthchecks_and_budget() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
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

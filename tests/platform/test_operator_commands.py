"""Operator commands given nonsense (issue 35): each exits non-zero with one line naming what is
wrong, and changes nothing: no rollout state, no history entry, no alias, no key, no file.

Real parts: the session's MLflow sqlite registry with a registered model, a log Redis and the
feature store (the tiny dataset loaded), a refused port for the stores that are not there."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from mlsys.cli import main
from mlsys.platform.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration
NAME = "ranknet-operator"


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, make_ranknet: Any, loaded_redis: Any
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("operator")
    for seed, alias in ((1, "champion"), (2, "challenger")):
        folder = make_ranknet(work / f"m{seed}", seed)
        assert main(["models", "register", str(folder), "--name", NAME, "--alias", alias]) == 0
    with RedisServer(workdir=work / "log", appendonly=True) as log:
        yield {"log": log.url, "features": loaded_redis.url, "work": work,
               "refused": f"redis://127.0.0.1:{free_port()}/0"}  # fmt: skip


def run(argv: list[str], capsys: Any) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = int(exc.code or 0)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def snapshot(stores: dict[str, Any]) -> dict[str, Any]:
    """Everything the cases could change."""
    log = redis.Redis.from_url(stores["log"])
    features = redis.Redis.from_url(stores["features"])
    from mlsys.platform.registry import Registry

    registry = Registry()
    return {
        "log_keys": sorted(log.keys("*")),
        "rollout": log.get(f"mlsys:rollout:{NAME}"),
        "history": log.lrange(f"mlsys:rollout:{NAME}:history", 0, -1),
        "aliases": {v.version: v.aliases for v in registry.versions(NAME)},
        "feature_keys": features.dbsize(),
    }


CASES = [
    # (name, argv, exit code, what the line must say)
    ("nan guardrail", ["rollout", "canary", NAME, "--max-p95-ms", "nan"], 2, "finite"),
    ("inf guardrail", ["rollout", "canary", NAME, "--max-p95-ms", "inf"], 2, "finite"),
    ("negative rate", ["rollout", "canary", NAME, "--max-error-rate", "-1"], 2, "between 0 and 1"),
    ("share above 1", ["rollout", "canary", NAME, "--max-error-rate", "1.5"], 2, "between 0 and 1"),
    ("percent 0", ["rollout", "ab", NAME, "--percent", "0"], 2, "(0, 100]"),
    ("refused log redis", ["rollout", "canary", NAME, "--redis", "{refused}"], 1, "--redis"),
    ("garbage url", ["rollout", "canary", NAME, "--redis", "not a url"], 1, "--redis"),
    ("report, refused", ["experiment", "report", NAME, "--redis", "{refused}"], 1, "--redis"),
    ("export, refused", ["log", "export", "{work}/x", "--redis", "{refused}"], 1, "--redis"),
    ("alias with a space", ["models", "alias", NAME, "bad alias!", "1"], 1, "alias 'bad alias!'"),
    ("alias like a version", ["models", "alias", NAME, "v7", "1"], 1, "alias 'v7'"),
    ("reserved alias", ["models", "alias", NAME, "latest", "1"], 1, "alias 'latest'"),
    (
        "challenger alias",
        ["rollout", "canary", NAME, "--challenger", "latest"],
        1,
        "alias 'latest'",
    ),
    ("unknown model", ["rollout", "stop", "nosuchmodel"], 1, "no registered model"),
    ("negative id", ["features", "set", "user", "-1", "--create", "--features", "1"], 2, ">= 0"),
    ("id beyond int64", ["features", "set", "user", str(10**19), "--create"], 2, "18 digits"),
    (
        "zero epochs",
        ["pipeline", "run", NAME, "--features", "x", "--workdir", "{work}/p", "--epochs", "0"],
        2,
        ">= 1",
    ),
    (
        "nan learning rate",
        ["retrain", "ranknet", "--data", "x", "--out", "{work}/r", "--lr", "nan"],
        2,
        "finite",
    ),
]


@pytest.mark.parametrize(("case", "argv", "code", "says"), CASES, ids=[c[0] for c in CASES])
def test_nonsense_is_one_line_and_changes_nothing(
    stores: dict[str, Any], capsys: Any, case: str, argv: list[str], code: int, says: str
) -> None:
    argv = [a.format(**stores) for a in argv]
    needs_redis = argv[0] in ("rollout", "experiment", "log") and "--redis" not in argv
    if needs_redis:
        argv += ["--redis", stores["log"]]
    if argv[:2] == ["features", "set"]:
        argv += ["--redis", stores["features"]]
    before = snapshot(stores)
    got, lines = run(argv, capsys)
    assert got == code, (case, lines)
    assert len(lines) == 1 and says in lines[0], (case, lines)
    assert snapshot(stores) == before, case
    assert not (stores["work"] / "x").exists() and not (stores["work"] / "p").exists()


def test_a_mistyped_registry_is_not_created(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "mlflw.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    got, lines = run(["models", "list"], capsys)
    assert got == 1 and len(lines) == 1 and "no registry at" in lines[0]
    assert not db.exists()


def test_a_refused_tracking_server_fails_within_seconds(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    got, lines = run(["models", "list", NAME], capsys)
    assert got != 0 and time.monotonic() - started < 30
    assert len(lines) == 1, lines


def test_enforce_stops_only_the_experiment_it_reports_while_it_runs(
    stores: dict[str, Any], capsys: Any
) -> None:
    """A canary whose guardrail failed, reported with --enforce after another rollout took
    its place: the running one is left alone; reported while it runs, it is stopped."""
    log = redis.Redis.from_url(stores["log"])
    base = ["--redis", stores["log"]]
    assert main(["rollout", "canary", NAME, "--percent", "50", "--max-p95-ms", "1", *base]) == 0
    canary = json.loads(log.get(f"mlsys:rollout:{NAME}"))["experiment"]
    _slow_challenger(log, canary)  # its p95 guardrail fails
    time.sleep(1.1)  # experiment ids are per second
    assert main(["rollout", "ab", NAME, *base]) == 0
    running = json.loads(log.get(f"mlsys:rollout:{NAME}"))["experiment"]
    out = stores["work"] / "report"
    argv = ["experiment", "report", NAME, "--experiment", canary, "--enforce", "--json",
            "--out", str(out), *base]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "stop: guardrail"
    assert json.loads(log.get(f"mlsys:rollout:{NAME}"))["experiment"] == running  # untouched

    # The same, reported while it is the running experiment: stopped.
    time.sleep(1.1)
    assert main(["rollout", "canary", NAME, "--percent", "50", "--max-p95-ms", "1", *base]) == 0
    second = json.loads(log.get(f"mlsys:rollout:{NAME}"))["experiment"]
    _slow_challenger(log, second)
    argv[4] = second
    assert main(argv) == 0 and log.get(f"mlsys:rollout:{NAME}") is None


def _slow_challenger(log: Any, experiment: str) -> None:
    """200 impressions of `experiment`, the challenger's 50 ms slower than the champion's."""
    for i in range(200):
        arm = "challenger" if i % 2 else "champion"
        record = {"request_id": f"{experiment}-{i}", "experiment": experiment, "arm": arm,
                  "model": "m/1", "user_id": i, "ids": [1], "teams": "",
                  "server_ms": 53.0 if i % 2 else 3.0}  # fmt: skip
        log.xadd("mlsys:log:impressions", {"json": json.dumps(record)})

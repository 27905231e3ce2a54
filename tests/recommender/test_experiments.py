"""Online experiments end to end (issue 16): a real `mlsys serve --workers 2` serving
models:/NAME@champion with two registered versions, the feature store and an append-only log
Redis, driven through the CLI in every rollout mode.

The tests share one server and run in file order; each sets the mode it needs and waits until
both workers apply it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from mlsys.cli import main
from mlsys.platform.event_log import CLICKS, read_stream

pytestmark = pytest.mark.integration
NAME = "ranknet-experiments"
BODY = {"candidate_restaurant_ids": list(range(100)), "latitude": 13.87, "longitude": 100.58,
        "max_dist": 1e7, "size": 20}  # fmt: skip


@dataclass
class Server:
    url: str
    log_url: str
    proc: Any
    log: Any


@pytest.fixture(scope="module")
def server(
    loaded_redis: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_ranknet: Any,
    alias_server: Any,
) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("experiments")
    for seed, alias in ((11, "champion"), (12, "challenger")):
        folder = make_ranknet(work / f"m{seed}", seed)
        assert main(["models", "register", str(folder), "--name", NAME, "--alias", alias]) == 0
    with alias_server(NAME, loaded_redis.url, work) as (url, log, proc):
        yield Server(url, log.url, proc, redis.Redis.from_url(log.url))


def _recommend(http: httpx.Client, user: int, request_id: str | None = None) -> httpx.Response:
    headers = {"x-request-id": request_id} if request_id else {}
    return http.post(f"/recommend/{user}", json=BODY, headers=headers)


def _set_mode(server: Server, *args: str) -> tuple[float, int]:
    """Run `mlsys rollout ...`; return how long until 20 answers in a row (from /readyz and
    /recommend, so from both workers) showed it, and how many /recommend answers showed it."""
    started = time.monotonic()
    assert main(["rollout", *args, NAME, "--redis", server.log_url]) == 0
    state = server.log.get(f"mlsys:rollout:{NAME}")
    want = None if state is None else json.loads(state)
    applied_answers = streak = 0
    pids: set[int] = set()
    with _fresh_connections(server) as http:
        while streak < 20 or len(pids) < 2:
            assert time.monotonic() - started < 30, "the workers never applied the rollout"
            ready = http.get("/readyz").json()
            serving = ready["models"]["recommender"]
            experiment = _recommend(http, 1).headers.get("x-experiment", "")
            if want is None:
                applied = "(" not in serving and not experiment
            else:
                applied = f"({want['mode']} {want['percent']:g}% " in serving and (
                    experiment == want["experiment"]
                )
                applied_answers += experiment == want["experiment"]
            streak = streak + 1 if applied else 0
            pids = pids | {ready["pid"]} if applied else set()
    return time.monotonic() - started, applied_answers


def _fresh_connections(server: Server) -> httpx.Client:
    """A client that opens a connection per request, so requests reach every worker (a
    keep-alive connection stays with the worker that accepted it)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=server.url, timeout=10, limits=limits)


def _arms_by_user(server: Server, users: range, rounds: int) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = defaultdict(set)
    with _fresh_connections(server) as http:
        for _ in range(rounds):
            for user in users:
                r = _recommend(http, user)
                assert r.status_code == 200
                arm = r.headers["x-arm"]
                version = r.headers["x-model-version"]
                assert version == f"{NAME}/{1 if arm == 'champion' else 2}", (arm, version)
                seen[user].add(arm)
    return seen


def test_ab_reaches_every_worker_within_5_s_and_keeps_each_user_on_one_arm(
    server: Server, capsys: pytest.CaptureFixture[str], tiny_data: Path
) -> None:
    took, applied = _set_mode(server, "ab", "--percent", "50")
    assert took < 5.0
    seen = _arms_by_user(server, range(400), rounds=3)
    assert all(len(arms) == 1 for arms in seen.values())
    challenger = sum(arms == {"challenger"} for arms in seen.values())
    assert 150 < challenger < 250

    capsys.readouterr()
    assert main(["simulate", "users", server.url, "--data", str(tiny_data), "--rate", "40",
                 "--duration", "3", "--json"]) == 0  # fmt: skip
    sim = json.loads(capsys.readouterr().out)
    assert sim["ok"] == sim["requests"] == 120 and sim["users_switching_arm"] == 0
    for arm in sim["arms"].values():
        assert {"requests", "impressions", "clicks", "ctr"} <= set(arm)
        assert arm["oracle_ctr"] >= arm["expected_ctr"] - 1e-9  # the oracle is the limit
    assert sum(a["clicks"] for a in sim["arms"].values()) > 0

    out = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent / "ab-report"
    assert main(["experiment", "report", NAME, "--redis", server.log_url, "--out", str(out),
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    arms = report["arms"]
    impressions = arms["champion"]["impressions"] + arms["challenger"]["impressions"]
    assert impressions == 1200 + 120 + applied
    assert report["srm_p"] > 0.001 and report["users_in_both_arms"] == 0
    assert report["decision"] in ("challenger better", "challenger worse", "undecided")
    low, high = arms["challenger"]["ctr_interval"]
    assert low <= arms["challenger"]["ctr"] <= high, arms
    clicks = sum(a["clicks"] for a in sim["arms"].values())
    assert arms["champion"]["clicks"] + arms["challenger"]["clicks"] == clicks
    assert (out / "ctr.png").stat().st_size > 10_000 and (out / "report.md").is_file()


def test_a_canary_ramp_keeps_its_challenger_users(server: Server) -> None:
    _set_mode(server, "canary", "--percent", "10")
    at10 = _arms_by_user(server, range(400), rounds=1)
    _set_mode(server, "canary", "--percent", "40")
    at40 = _arms_by_user(server, range(400), rounds=1)
    before = {u for u, a in at10.items() if a == {"challenger"}}
    after = {u for u, a in at40.items() if a == {"challenger"}}
    assert 15 < len(before) < 70 and before < after and 120 < len(after) < 200


def test_interleaving_merges_both_rankings_and_credits_clicks_to_the_team(server: Server) -> None:
    _set_mode(server, "interleave")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = _recommend(http, 5, request_id="interleave-test-1")
        assert r.headers["x-arm"] == "interleaved"
        assert r.headers["x-model-version"] == f"{NAME}/1,{NAME}/2"
        first = r.json()["answer_id"]
        assert (
            r.headers["x-answer-id"] == first and r.headers["x-request-id"] == "interleave-test-1"
        )
        ids = [x["id"] for x in r.json()["restaurants"]]
        assert len(ids) == len(set(ids)) == 20
        deadline = time.monotonic() + 5
        served: dict[bytes, bytes] = {}
        while not served and time.monotonic() < deadline:  # the writer ships it off the path
            served = server.log.hgetall(f"mlsys:served:{first}")
            time.sleep(0.01)
        teams = served[b"teams"].decode()
        assert len(teams) == 20 and set(teams) == {"a", "b"}
        for position in (1, 2, 3):
            f = http.post("/feedback", json={"answer_id": first, "user_id": 5,
                                             "restaurant_id": ids[position - 1]})  # fmt: skip
            assert f.status_code == 202
            team = teams[position - 1]
            credited = "champion" if team == "a" else "challenger"
            assert f.json() == {"recorded": True, "status": "recorded", "position": position,
                                "credited": credited}  # fmt: skip
        by_distance = http.post("/recommend/5", json={**BODY, "sort_dist": True},
                                headers={"x-request-id": "interleave-test-2"})  # fmt: skip
        assert by_distance.status_code == 200
        second = by_distance.json()["answer_id"]
    logged = _impressions(server, {first, second})
    assert logged[first]["arms_agree"] is False and logged[first]["correlation_id"] == (
        "interleave-test-1"
    )
    assert logged[second]["arms_agree"] is True  # a distance sort: no preference


def test_shadow_answers_with_the_champion_and_logs_the_challenger(server: Server) -> None:
    _set_mode(server, "stop")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        alone = _recommend(http, 9).json()
        before = server.log.xlen("mlsys:log:shadow")
        _set_mode(server, "shadow")
        r = _recommend(http, 9, request_id="shadow-test-1")
        answer = r.json()
        assert r.headers["x-arm"] == "champion"
        assert (
            answer["restaurants"] == alone["restaurants"]
            and answer["answer_id"] != alone["answer_id"]
        )
        deadline = time.monotonic() + 5
        mine: list[dict[str, Any]] = []
        while not mine and time.monotonic() < deadline:  # written after the answer
            time.sleep(0.05)
            entries = server.log.xrevrange("mlsys:log:shadow", count=50)
            records = [json.loads(fields[b"json"]) for _, fields in entries]
            mine = [x for x in records if x["request_id"] == answer["answer_id"]]
        assert server.log.xlen("mlsys:log:shadow") > before + 20
        assert len(mine) == 1 and mine[0]["model"] == f"{NAME}/2"
        assert sorted(mine[0]["ids"]) != [] and mine[0]["champion"] == f"{NAME}/1"
        metrics = http.get("/metrics").text
    assert 'mlsys_shadow_requests_total{outcome="logged"}' in metrics


def test_feedback_refuses_what_was_not_shown_and_names_the_field(server: Server) -> None:
    _set_mode(server, "stop")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = _recommend(http, 3, request_id="feedback-test-1")
        answer = r.json()["answer_id"]
        shown = [x["id"] for x in r.json()["restaurants"]]
        hidden = next(i for i in range(100) if i not in shown)

        def post(body: Any) -> httpx.Response:
            return http.post("/feedback", json=body)

        def click(item: Any, user: Any = 3, answer_id: str = answer) -> dict[str, Any]:
            return {"answer_id": answer_id, "user_id": user, "restaurant_id": item}

        ok = post(click(shown[0]))
        assert ok.status_code == 202 and ok.json()["position"] == 1
        cases = [
            (click(shown[0]), 409, "restaurant_id"),
            (click(shown[1], user=4), 422, "user_id"),  # another user's answer
            (click(hidden), 422, "restaurant_id"),
            (click(shown[0], answer_id="A" * 22), 404, "answer_id"),
            (click(shown[0], answer_id="feedback-test-1"), 422, "answer_id"),  # a client's id
            (click("7"), 422, "restaurant_id"),
            (click(1.5), 422, "restaurant_id"),
            ({"answer_id": answer, "restaurant_id": shown[0]}, 422, "user_id"),
            ({"restaurant_id": shown[0], "user_id": 3}, 422, "answer_id"),
            ([1, 2], 422, "body"),
        ]
        for body, status, field in cases:
            got = post(body)
            assert got.status_code == status, (body, got.text)
            assert got.json()["field"] == field, (body, got.text)
        metrics = http.get("/metrics").text
    for outcome in ("recorded", "duplicate", "not_in_response", "unknown_request", "invalid",
                    "wrong_user"):  # fmt: skip
        assert f'mlsys_feedback_total{{outcome="{outcome}"}}' in metrics


def test_a_client_chosen_id_keys_nothing_and_a_click_counts_once(server: Server) -> None:
    """The attack of issue 35: one X-Request-ID sent by two users and re-sent 50 times, each
    answer clicked again and again. Every answer gets its own server id; the first user's
    click on their own answer still counts; each shown item counts one click per answer."""
    _set_mode(server, "stop")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        first = _recommend(http, 5, request_id="same").json()
        other = _recommend(http, 6, request_id="same")
        assert other.headers["x-request-id"] == "same"  # echoed, as a correlation id
        assert other.json()["answer_id"] != first["answer_id"]
        mine = {"answer_id": first["answer_id"], "user_id": 5,
                "restaurant_id": first["restaurants"][0]["id"]}  # fmt: skip
        assert http.post("/feedback", json=mine).status_code == 202

        answers = [_recommend(http, 7, request_id="same").json() for _ in range(50)]
        assert len({a["answer_id"] for a in answers}) == 50
        statuses: Counter[int] = Counter()
        for answer in answers:
            item = answer["restaurants"][0]["id"]
            for _ in range(3):  # the same click, again and again
                body = {"answer_id": answer["answer_id"], "user_id": 7, "restaurant_id": item}
                statuses[http.post("/feedback", json=body).status_code] += 1
    assert statuses == {202: 50, 409: 100}
    ids = {a["answer_id"] for a in answers}
    deadline = time.monotonic() + 10  # a click held as pending is recorded within seconds
    while True:
        clicks = Counter(c["request_id"] for c in read_stream(server.log, CLICKS)
                         if c["request_id"] in ids)  # fmt: skip
        if len(clicks) == 50 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(clicks) == 50 and set(clicks.values()) == {1}


def test_exported_impressions_equal_the_200_answers_across_a_killed_worker(
    server: Server, tmp_path: Path
) -> None:
    _set_mode(server, "ab")
    main(["log", "export", str(tmp_path / "before"), "--redis", server.log_url])  # drain
    statuses: dict[str, int] = {}  # by the client's X-Request-ID
    answers: dict[str, str] = {}  # client id -> the answer id the server made

    stop = threading.Event()

    def traffic(worker: int) -> None:
        i = 0
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                rid = f"kill-{worker}-{i}"
                try:
                    r = _recommend(http, i % 500, request_id=rid)
                    statuses[rid] = r.status_code
                    if r.status_code == 200:
                        answers[rid] = r.json()["answer_id"]
                except httpx.HTTPError:
                    statuses[rid] = 0
                i += 1

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    workers = psutil.Process(server.proc.pid).children(recursive=True)
    victim = next(p for p in workers if "spawn_main" in " ".join(p.cmdline()))
    os.kill(victim.pid, signal.SIGKILL)
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()

    from mlsys.platform.log_export import read_parts

    # The killed worker's answers sit in its spool until a writer finds it (the restarted
    # worker at its start, the other within 5 s): export until they are all in the log.
    out = tmp_path / "export"
    answered = {rid for rid, status in statuses.items() if status == 200}
    deadline = time.monotonic() + 30
    while True:
        assert main(["log", "export", str(out), "--redis", server.log_url]) == 0
        table = read_parts(out / "impressions")
        by_answer = dict(zip(table.column("request_id").to_pylist(),
                             table.column("correlation_id").to_pylist(), strict=True))  # fmt: skip
        logged = {rid for rid in by_answer.values() if rid.startswith("kill-")}
        if answered <= logged or time.monotonic() > deadline:
            break
        time.sleep(1)
    failed = {rid for rid, status in statuses.items() if status != 200}
    assert len(answered) > 200 and answered <= logged
    assert all(by_answer[answers[rid]] == rid for rid in answered)  # keyed by the server's id
    # Every answer carries the drift monitor's scored row, scored by the model that answered.
    rows = read_parts(out / "impressions").select(["sample", "sample_model", "model"]).to_pylist()
    assert all(len(r["sample"]) == 40 and r["sample_model"] == r["model"] for r in rows)
    assert logged - answered <= failed  # at most answers that never arrived
    assert len(logged - answered) <= 4  # one in-flight request per connection, at most
    with httpx.Client(base_url=server.url, timeout=10) as http:
        # The server kept serving. A worker just restarted may answer its first request 503
        # (Retry-After: 1) while it connects under load: once, in a fresh-clone CI run.
        after = _recommend(http, 1)
        if after.status_code == 503:
            time.sleep(1)
            after = _recommend(http, 1)
        assert after.status_code == 200, after.text
        # The dead worker's live gauges went with it (its pid used to stay forever).
        info = [line for line in http.get("/metrics").text.splitlines()
                if line.startswith("mlsys_model_info")]  # fmt: skip
        assert info and not any(f'pid="{victim.pid}"' in line for line in info), info


def test_stop_returns_every_answer_to_the_champion(server: Server) -> None:
    _set_mode(server, "stop")
    seen = _arms_by_user(server, range(100), rounds=1)
    assert all(arms == {"champion"} for arms in seen.values()), dict(seen)


def _impressions(server: Server, request_ids: set[str], timeout_s: float = 5.0) -> dict[str, Any]:
    """The latest impressions by request id, once all of `request_ids` are in the log (the
    writer ships them within milliseconds of the answers)."""
    deadline = time.monotonic() + timeout_s
    logged: dict[str, Any] = {}
    while not request_ids <= set(logged) and time.monotonic() < deadline:
        time.sleep(0.01)
        for _, fields in server.log.xrevrange("mlsys:log:impressions", count=200):
            record = json.loads(fields[b"json"])
            logged.setdefault(record["request_id"], record)
    return logged
